using Inference.Chat;
using Inference.Engine;
using Inference.Loading;
using Inference.Sampling;
using Inference.Tests.Support;

namespace Inference.Tests.Chat;

public class InferenceEngineChatTests
{
    // A Llama-2-like template: stories260K has no chat template of its own.
    private static readonly ChatTemplate InstTemplate = ChatTemplate.Parse(
        "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}[INST] {{ m.content }} [/INST]{% elif m.role == 'assistant' %}{{ m.content }}{{ eos_token }}{% endif %}{% endfor %}");

    private static readonly ChatPromptOptions Inst = new() { Template = InstTemplate };

    private InferenceEngine _engine = null!;

    [OneTimeSetUp]
    public async Task LoadAsync() => _engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1 });

    [OneTimeTearDown]
    public async Task DisposeAsync() => await _engine.DisposeAsync();

    [Test]
    public void ModelWithoutTemplateNeedsAnExplicitOne()
    {
        Assert.That(_engine.ChatTemplate, Is.Null);
        Assert.Throws<InvalidOperationException>(() => _engine.ChatAsync([ChatMessage.User("hi")]));
    }

    [Test]
    public async Task PlainTemplateGivesTheSameTokensAndTextAsGenerate()
    {
        // A template that only emits bos_token and the content: the chat path must match the plain path exactly
        // (BOS once: the template's "<s>" becomes the BOS id and no second one is added).
        var plain = new ChatPromptOptions { Template = ChatTemplate.Parse("{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}") };
        var noBos = new ChatPromptOptions { Template = ChatTemplate.Parse("{% for m in messages %}{{ m.content }}{% endfor %}") };
        ChatMessage[] messages = [ChatMessage.User("Once upon a time")];
        int[] expected = _engine.Tokenize("Once upon a time");
        Assert.That(expected[0], Is.EqualTo(_engine.Tokenizer.BosId));
        Assert.That(_engine.TokenizeChat(messages, plain), Is.EqualTo(expected));
        Assert.That(_engine.TokenizeChat(messages, noBos), Is.EqualTo(expected));

        var sampling = SamplingOptions.Greedy with { MaxTokens = 24 };
        var viaGenerate = await _engine.CompleteAsync("Once upon a time", sampling);
        var stream = _engine.ChatAsync(messages, sampling, plain);
        var text = "";
        await foreach (var token in stream) text += token.Text;
        var viaChat = await stream.Completion;
        Assert.That(viaChat.PromptTokenIds, Is.EqualTo(expected));
        Assert.That(viaChat.Text, Is.EqualTo(viaGenerate.Text));
        Assert.That(text, Is.EqualTo(viaChat.Text));
        Assert.That(viaChat.Text, Does.StartWith(", there was"));
    }

    [Test]
    public void ControlTokenTextsBecomeControlTokens()
    {
        ChatMessage[] messages = [ChatMessage.User("Tom"), ChatMessage.Assistant("Hi Tom"), ChatMessage.User("Lily")];
        string rendered = _engine.RenderChat(messages, Inst);
        Assert.That(rendered, Is.EqualTo("<s>[INST] Tom [/INST]Hi Tom</s>[INST] Lily [/INST]"));
        var tokenizer = _engine.Tokenizer;
        int[] expected =
        [
            tokenizer.BosId!.Value,
            .. tokenizer.Encode("[INST] Tom [/INST]Hi Tom", addSpecial: false),
            tokenizer.EosId!.Value,
            .. tokenizer.Encode("[INST] Lily [/INST]", addSpecial: false),
        ];
        Assert.That(_engine.TokenizeChat(messages, Inst), Is.EqualTo(expected));
    }

    [Test]
    public async Task EachTurnExtendsThePreviousPromptTokens()
    {
        var history = new List<ChatMessage> { ChatMessage.User("Tell me about a cat.") };
        var sampling = SamplingOptions.Greedy with { MaxTokens = 12 };
        int[]? previous = null;
        for (int turn = 0; turn < 3; turn++)
        {
            int[] tokens = _engine.TokenizeChat(history, Inst);
            if (previous is not null) Assert.That(tokens[..previous.Length], Is.EqualTo(previous), $"turn {turn}");
            var stream = _engine.ChatAsync(history, sampling, Inst);
            await foreach (var _ in stream) { }
            var completion = await stream.Completion;
            Assert.That(completion.PromptTokenIds, Is.EqualTo(tokens));
            Assert.That(completion.TokenIds, Is.Not.Empty);
            history.Add(ChatMessage.Assistant(completion.Text));
            history.Add(ChatMessage.User("And then?"));
            previous = tokens;
        }
    }

    [Test]
    public void TemplateErrorsSurface()
    {
        var strict = new ChatPromptOptions { Template = ChatTemplate.Parse("{% if messages[0].role != 'user' %}{{ raise_exception('user first') }}{% endif %}x") };
        var e = Assert.Throws<ChatTemplateException>(() => _engine.ChatAsync([ChatMessage.Assistant("a")], null, strict))!;
        Assert.That(e.RaisedByTemplate, Is.True);
        Assert.Throws<ArgumentNullException>(() => _engine.ChatAsync(null!));
    }

    [Test]
    public async Task ModelTemplateFromTheGgufIsUsed()
    {
        // A random-weight model carrying the phi-3 tokenizer and its chat template; <|user|>, <|end|>, <|assistant|>
        // are special tokens there and must come out as single ids.
        string dir = TestData.TempDir();
        try
        {
            string path = Path.Combine(dir, "phi3-chat.gguf");
            SyntheticModel.Write(path, new SyntheticModelOptions { TokenizerDonorPath = TestData.Path("vocab/ggml-vocab-phi-3.gguf"), Dimension = 32, HeadCount = 4, KvHeadCount = 2, FeedForwardLength = 64, LayerCount = 1 });
            await using var engine = await InferenceEngine.LoadAsync(path, new EngineOptions { Threads = 1, ContextLength = 256 });
            Assert.That(engine.ChatTemplate, Is.Not.Null);
            ChatMessage[] messages = [ChatMessage.User("Hello"), ChatMessage.Assistant("Hi"), ChatMessage.User("Bye")];
            string rendered = engine.RenderChat(messages);
            Assert.That(rendered, Is.EqualTo("<s><|user|>\nHello<|end|>\n<|assistant|>\nHi<|end|>\n<|user|>\nBye<|end|>\n<|assistant|>\n"));

            int[] tokens = engine.TokenizeChat(messages);
            using var gguf = GgufFile.Open(path);
            var vocabulary = gguf.GetArray<string>("tokenizer.ggml.tokens")!;
            int Id(string text) => Array.IndexOf(vocabulary, text);
            Assert.That(tokens[0], Is.EqualTo(engine.Tokenizer.BosId));
            Assert.That(tokens.Count(t => t == engine.Tokenizer.BosId), Is.EqualTo(1));
            Assert.That(tokens[1], Is.EqualTo(Id("<|user|>")));
            Assert.That(tokens.Count(t => t == Id("<|end|>")), Is.EqualTo(3));
            Assert.That(tokens.Count(t => t == Id("<|assistant|>")), Is.EqualTo(2));
            // Text after a special token gets SentencePiece's dummy prefix, as in llama.cpp: "\n" → "▁", "<0x0A>".
            Assert.That(tokens[^3..], Is.EqualTo(new[] { Id("<|assistant|>"), Id("▁"), Id("<0x0A>") }));
            Assert.That(engine.Tokenizer.Decode(tokens), Does.Contain("Hello").And.Contain("Bye"));

            var completion = await engine.CompleteAsync(tokens, SamplingOptions.Greedy with { MaxTokens = 4, EndOfSequence = EndOfSequenceHandling.Ignore });
            Assert.That(completion.TokenIds, Has.Count.EqualTo(4));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
