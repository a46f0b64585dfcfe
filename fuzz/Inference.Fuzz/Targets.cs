using System.Text;
using System.Text.Json;
using Inference.Chat;
using Inference.Loading;
using Inference.Server;
using Inference.Tokenization;

/// <summary>
/// Fuzz targets beyond the GGUF header: each runs one input and throws (a crash to AFL) only when the input breaks the
/// target's contract.
/// </summary>
internal static class Targets
{
    private static readonly List<ChatMessage> Messages =
    [
        new(ChatRole.System, "Be brief."),
        new(ChatRole.User, "Hi {{ there }} {% x %}"),
        new(ChatRole.Assistant, "Hello."),
        new(ChatRole.User, "Bye \U0001F600"),
    ];

    private static readonly ChatTemplateOptions TemplateOptions = new() { BosToken = "<s>", EosToken = "</s>" };

    /// <summary>A chat template (UTF-8): it parses and renders, or is refused with ChatTemplateException.</summary>
    public static void Template(byte[] input)
    {
        string source = Encoding.UTF8.GetString(input);
        try
        {
            ChatTemplate.Parse(source).Render(Messages, TemplateOptions);
        }
        catch (ChatTemplateException e) when (e.Message.Length > 0)
        {
        }
    }

    private static readonly List<(ModelTokenizer Tokenizer, bool ByteLevel)> Tokenizers = [];

    // NOTE: loaded on the first input, inside Fuzzer.Run: instrumented code must not run before the fuzzer sets up its
    // coverage map (the fork server aborts with signal 6 otherwise).
    private static void LoadTokenizers(string testData)
    {
        foreach (var (file, byteLevel) in new[]
        {
            ("stories260K.gguf", false), ("vocab/ggml-vocab-llama-spm.gguf", false), ("vocab/ggml-vocab-phi-3.gguf", false),
            ("vocab/ggml-vocab-gpt-2.gguf", true), ("vocab/ggml-vocab-deepseek-llm.gguf", true),
        })
        {
            using var gguf = GgufFile.Open(Path.Combine(testData, file));
            Tokenizers.Add((ModelTokenizer.FromGguf(gguf), byteLevel));
        }
    }

    // INFERENCE_FUZZ_EXPAND=N (replays only): every text is repeated to at least N characters, so that a saved queue
    // can be run again as megabyte inputs.
    private static readonly int ExpandTo = int.TryParse(Environment.GetEnvironmentVariable("INFERENCE_FUZZ_EXPAND"), out int n) ? n : 0;

    /// <summary>
    /// Text for one of five real tokenizers. The first byte picks the tokenizer (its value modulo 5), whether
    /// special-token texts are parsed (0x10), whether the rest is read as UTF-8 or as raw UTF-16 units, lone surrogates
    /// included (0x20), and whether the text is repeated to at least 2 Ki characters (0x40: longer words and runs, without
    /// making every execution slow). Ids must be in the vocabulary, decoding must not throw, and byte-level BPE must give
    /// well-formed text back exactly.
    /// </summary>
    public static void Tokenize(byte[] input)
    {
        if (Tokenizers.Count == 0) LoadTokenizers(Environment.GetEnvironmentVariable("INFERENCE_TESTDATA") ?? "../shared/testdata");
        if (input.Length == 0) return;
        var (tokenizer, byteLevel) = Tokenizers[input[0] % Tokenizers.Count];
        bool special = (input[0] & 0x10) != 0, utf16 = (input[0] & 0x20) != 0;
        var rest = input.AsSpan(1);
        string text = utf16 ? new string(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, char>(rest[..(rest.Length & ~1)])) : Encoding.UTF8.GetString(rest);
        int expandTo = Math.Max(ExpandTo, (input[0] & 0x40) != 0 ? 2 << 10 : 0);
        if (expandTo > 0 && text.Length > 0 && text.Length < expandTo)
        {
            var sb = new StringBuilder(expandTo + text.Length);
            while (sb.Length < expandTo) sb.Append(text);
            text = sb.ToString();
        }
        int[] ids = tokenizer.Encode(text, addSpecial: special, special ? SpecialTokenText.Token : SpecialTokenText.Literal);
        foreach (int id in ids)
            if ((uint)id >= (uint)tokenizer.VocabularySize) throw new InvalidOperationException($"id {id} outside the vocabulary of {tokenizer.VocabularySize}");
        string decoded = tokenizer.Decode(ids);
        if (byteLevel && !special && !text.AsSpan().ContainsAnyInRange('\uD800', '\uDFFF') && decoded != text)
            throw new InvalidOperationException("byte-level BPE did not give the text back");
    }

    /// <summary>A GGUF file holding a vocabulary: it loads as a tokenizer (which then encodes a text) or is refused with ModelFormatException.</summary>
    public static void Vocabulary(byte[] input)
    {
        try
        {
            using var gguf = GgufFile.OpenBuffer(input, "fuzz-vocab.gguf");
            var tokenizer = ModelTokenizer.FromGguf(gguf);
            int[] ids = tokenizer.Encode("Hello wörld <s> 😀 \u00a0 12345", addSpecial: true, SpecialTokenText.Token);
            foreach (int id in ids)
                if ((uint)id >= (uint)tokenizer.VocabularySize) throw new InvalidOperationException($"id {id} outside the vocabulary of {tokenizer.VocabularySize}");
            tokenizer.Decode(ids);
        }
        catch (ModelFormatException e) when (!e.Message.Contains('\n'))
        {
        }
    }

    /// <summary>A request body: not JSON, or parsed as a chat or completions request, or refused with a 400 OpenAiError.</summary>
    public static void Request(byte[] input)
    {
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(input);
        }
        catch (JsonException)
        {
            return;
        }
        using (document)
        {
            var root = document.RootElement;
            // NOTE: the server knows the kind from the route; a property name that is not valid UTF-16 ("\\udded")
            // makes TryGetProperty throw here, so such a body goes to ParseCompletion, which answers it with 400.
            bool chat;
            try { chat = root.ValueKind == JsonValueKind.Object && root.TryGetProperty("messages", out _); }
            catch (InvalidOperationException) { chat = false; }
            try
            {
                if (chat) OpenAiRequest.ParseChat(root, 16);
                else OpenAiRequest.ParseCompletion(root, 16, 32);
            }
            catch (OpenAiError e) when (e.Status == 400)
            {
            }
        }
    }

    /// <summary>
    /// A constraint a request can carry, then bytes walked through its automaton. The first byte picks a regex, a GBNF
    /// grammar or a JSON schema; the text runs to the first NUL, the bytes to walk follow it. The constraint compiles
    /// or is refused with a one-line InvalidConstraintException, and walking it never throws anything else.
    /// </summary>
    public static void Constraint(byte[] input)
    {
        if (input.Length == 0) return;
        int split = Array.IndexOf(input, (byte)0, 1);
        string text = Encoding.UTF8.GetString(input, 1, (split < 0 ? input.Length : split) - 1);
        Inference.Constraints.Constraint constraint;
        try
        {
            constraint = (input[0] % 3) switch
            {
                0 => new Inference.Constraints.RegexConstraint(text),
                1 => new Inference.Constraints.GrammarConstraint(text),
                _ => new Inference.Constraints.JsonSchemaConstraint(text),
            };
        }
        catch (Inference.Constraints.InvalidConstraintException e) when (!e.Message.Contains('\n'))
        {
            return;
        }
        if (split < 0) return;
        var automaton = new Inference.Constraints.GrammarAutomaton(constraint.Grammar);
        int state = automaton.InitialState;
        try
        {
            for (int i = split + 1; i < input.Length && state != Inference.Constraints.GrammarAutomaton.Dead; i++)
            {
                state = automaton.Step(state, input[i]);
                if (state != Inference.Constraints.GrammarAutomaton.Dead) _ = automaton.IsAccepting(state) || automaton.CanContinue(state);
            }
        }
        catch (Inference.Constraints.InvalidConstraintException e) when (!e.Message.Contains('\n'))
        {
        }
    }

    public static void MakeSeeds(string target, string testData, string outDir)
    {
        Directory.CreateDirectory(outDir);
        switch (target)
        {
            case "template":
                foreach (var (name, source) in TemplateSeeds)
                    File.WriteAllText(Path.Combine(outDir, name + ".jinja"), source);
                using (var phi3 = GgufFile.Open(Path.Combine(testData, "vocab", "ggml-vocab-phi-3.gguf")))
                    if (phi3.Metadata.TryGetValue("tokenizer.chat_template", out var phi3Template))
                        File.WriteAllText(Path.Combine(outDir, "phi-3.jinja"), phi3Template.ToString());
                // The published templates the tests render (raw string literals of the test sources), when given.
                if (Environment.GetEnvironmentVariable("INFERENCE_FUZZ_TEMPLATE_SOURCES") is { Length: > 0 } sources)
                {
                    int n = 0;
                    foreach (var file in Directory.GetFiles(sources, "*.cs"))
                        foreach (System.Text.RegularExpressions.Match m in System.Text.RegularExpressions.Regex.Matches(File.ReadAllText(file), "\"\"\"(.+?)\"\"\"", System.Text.RegularExpressions.RegexOptions.Singleline))
                            if (m.Groups[1].Value.Contains("{%", StringComparison.Ordinal) && m.Groups[1].Value.Length < 16384)
                                File.WriteAllText(Path.Combine(outDir, $"{Path.GetFileNameWithoutExtension(file)}-{n++}.jinja"), m.Groups[1].Value);
                }
                break;
            case "tokenizer":
                byte k = 0;
                foreach (var text in new[] { "Once upon a time, there was a little girl.", "Hello wörld 😀 \t\n  x", "<s>[INST] hi [/INST]</s>", "12345 678.9 don't", "日本語のテキスト" })
                    foreach (int flags in new[] { 0, 0x10, 0x40 })
                    {
                        File.WriteAllBytes(Path.Combine(outDir, $"text-{k}"), [(byte)(k | flags), .. Encoding.UTF8.GetBytes(text)]);
                        k++;
                    }
                break;
            case "vocab":
                WriteVocab(Path.Combine(outDir, "spm.gguf"), "llama", ["<unk>", "<s>", "</s>", "▁", "▁a", "b", "<0x41>", "ab"], [0, 0, 0, -1, -2, -3, 0, -4], [2, 3, 3, 1, 1, 1, 6, 4], null);
                WriteVocab(Path.Combine(outDir, "bpe.gguf"), "gpt2", ["a", "b", "ab", "Ġ", "Ġa", "<|endoftext|>"], null, [1, 1, 1, 1, 1, 3], ["a b", "Ġ a"]);
                break;
            case "request":
                foreach (var (name, body) in RequestSeeds) File.WriteAllText(Path.Combine(outDir, name + ".json"), body);
                break;
            case "constraint":
                foreach (var (name, kind, text, walk) in ConstraintSeeds)
                    File.WriteAllBytes(Path.Combine(outDir, name), [kind, .. Encoding.UTF8.GetBytes(text), 0, .. Encoding.UTF8.GetBytes(walk)]);
                break;
        }
    }

    private static void WriteVocab(string path, string model, string[] tokens, float[]? scores, int[] types, string[]? merges)
    {
        using var w = GgufWriter.Create(path, new GgufWriterOptions());
        w.AddString("general.architecture", "llama");
        w.AddString("tokenizer.ggml.model", model);
        if (model == "gpt2") w.AddString("tokenizer.ggml.pre", "gpt-2");
        w.AddStringArray("tokenizer.ggml.tokens", tokens);
        if (scores is not null) w.AddArray<float>("tokenizer.ggml.scores", scores);
        w.AddArray<int>("tokenizer.ggml.token_type", types);
        if (merges is not null) w.AddStringArray("tokenizer.ggml.merges", merges);
        if (model == "llama")
        {
            w.AddUInt32("tokenizer.ggml.unknown_token_id", 0);
            w.AddUInt32("tokenizer.ggml.bos_token_id", 1);
            w.AddUInt32("tokenizer.ggml.eos_token_id", 2);
        }
        else
        {
            w.AddUInt32("tokenizer.ggml.eos_token_id", (uint)tokens.Length - 1);
        }
        w.WriteHeader();
        w.Complete();
    }

    private static readonly (string Name, string Source)[] TemplateSeeds =
    [
        ("chatml", "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
        ("llama2", "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"),
        ("macro", "{%- macro render(m) -%}{{ m.role | upper }}: {{ m.content | trim }}{%- endmacro -%}{%- for m in messages|selectattr('role', 'ne', 'tool') -%}{{ render(m) }}{{ '\\n' if not loop.last }}{%- endfor -%}{%- if add_generation_prompt %}ASSISTANT:{% endif %}"),
        ("values", "{% set ns = namespace(x=[], d={}) %}{% for m in messages %}{% set ns.x = [ns.x, m] %}{% set _ = ns.x.append(loop.index) %}{% endfor %}{{ ns.x | tojson(indent=2) }}{{ ns.x == ns.x }}{{ ns }}{{ 'abcdef'[1:5:2] }}{{ [1,2,3][::-1] }}{{ range(10, 0, -3) | list }}{{ 'x' * 3 }}{{ 7 // 2 }}{{ 2 ** 10 }}{{ -7 % 3 }}{{ 'a,b'.split(',') }}"),
        ("filters", "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + m.content|length %}{{ m.content|replace('a','b')|lower ~ (m.content|tojson) }}{% endfor %}{{ ns.n }}{{ [1,2,3]|join(',') }}{{ {'a': 1}|items|list }}{{ range(3)|list }}"),
    ];

    private static readonly (string Name, byte Kind, string Text, string Walk)[] ConstraintSeeds =
    [
        ("regex", 0, @"^(?:[A-Z][a-z]+|\d{2,4})( [a-z]+)*[.!?]$", "Hello world 12 ab."),
        ("regex-class", 0, @"[^\n""]{0,8}\w+\s?(a|b|)*x{3}", "xy\"z ab x"),
        ("gbnf", 1, "root ::= obj\nobj ::= \"{\" (pair (\",\" pair)*)? \"}\"\npair ::= str \":\" val\nval ::= str | [0-9]+ | obj | \"[\" val{0,3} \"]\"\nstr ::= \"\\\"\" [^\"]* \"\\\"\"\n", "{\"a\":{\"b\":12},\"c\":[1]}"),
        ("schema", 2, """{"type":"object","properties":{"name":{"type":"string","maxLength":5},"age":{"type":"integer"},"tags":{"type":"array","items":{"enum":["x","y"]},"maxItems":2},"when":{"type":"string","format":"date-time"}},"required":["name"]}""", """{"name":"ab","age":-3,"tags":["x"]}"""),
        ("schema-ref", 2, """{"$defs":{"n":{"anyOf":[{"type":"null"},{"type":"object","properties":{"next":{"$ref":"#/$defs/n"}}}]}},"$ref":"#/$defs/n"}""", """{"next":{"next":null}}"""),
    ];

    private static readonly (string Name, string Body)[] RequestSeeds =
    [
        ("chat", """{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hi"}]}],"max_tokens":16,"temperature":0.7,"top_p":0.9,"stop":["\n","END"],"n":2,"seed":3,"logprobs":true,"top_logprobs":2,"stream":true,"stream_options":{"include_usage":true}}"""),
        ("tools", """{"model":"m","messages":[{"role":"user","content":"weather?"},{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"get","arguments":"{\"city\":\"Paris\"}"}}]},{"role":"tool","tool_call_id":"c1","content":"sunny"}],"tools":[{"type":"function","function":{"name":"get","description":"d","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}],"tool_choice":{"type":"function","function":{"name":"get"}}}"""),
        ("schema", """{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"name":"s","strict":true,"schema":{"type":"object","properties":{"a":{"type":"integer","minimum":0},"b":{"type":"array","items":{"enum":["x","y"]}}},"required":["a"]}}}}"""),
        ("completion", """{"model":"m","prompt":["Once upon", "a time"],"max_tokens":8,"echo":true,"logprobs":2,"best_of":1,"stop":"."}"""),
        ("grammar", """{"model":"m","prompt":"x","guided_grammar":"root ::= item (\",\" item)*\nitem ::= [a-z]+ | \"(\" root \")\" | num{1,3}\nnum ::= [0-9]"}"""),
        ("pattern", """{"model":"m","messages":[{"role":"user","content":"x"}],"guided_json":{"type":"object","properties":{"id":{"type":"string","pattern":"^(?:[A-Z]{2}|x)-\\d+$"},"tags":{"type":"array","items":{"$ref":"#/$defs/t"}}},"$defs":{"t":{"anyOf":[{"type":"string","format":"date"},{"type":"null"}]}}}}"""),
        ("tokens", """{"model":"m","prompt":[[1,2,3],[4,5]],"max_tokens":4,"guided_regex":"[a-z]+","guided_choice":null}"""),
    ];
}
