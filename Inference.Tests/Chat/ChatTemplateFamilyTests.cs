using Inference.Chat;
using Inference.Loading;
using Inference.Tests.Support;

namespace Inference.Tests.Chat;

/// <summary>
/// The published chat templates of the common model families, rendered for one conversation and compared with the
/// rendering worked out by hand from each template's text (Hugging Face semantics: trim_blocks and lstrip_blocks).
/// </summary>
public class ChatTemplateFamilyTests
{
    // system + user + assistant + user; the last message ends in a newline so trimming templates show.
    private static readonly ChatMessage[] Conversation =
    [
        ChatMessage.System("You are terse."),
        ChatMessage.User("Hi there"),
        ChatMessage.Assistant("Hello! How can I help?"),
        ChatMessage.User("Tell me a joke.\n"),
    ];

    private static readonly ChatMessage[] WithoutSystem = Conversation[1..];

    private static string Render(string template, IReadOnlyList<ChatMessage> messages, string bos, string eos, GenerationPrompt prompt = GenerationPrompt.Add) =>
        ChatTemplate.Parse(template).Render(messages, new ChatTemplateOptions { BosToken = bos, EosToken = eos, GenerationPrompt = prompt });

    // meta-llama/Llama-2-7b-chat-hf
    private const string Llama2Template = """{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}""";

    [Test]
    public void Llama2()
    {
        Assert.That(Render(Llama2Template, Conversation, "<s>", "</s>"), Is.EqualTo(
            "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi there [/INST] Hello! How can I help? </s><s>[INST] Tell me a joke. [/INST]"));
        Assert.That(Render(Llama2Template, WithoutSystem, "<s>", "</s>"), Is.EqualTo(
            "<s>[INST] Hi there [/INST] Hello! How can I help? </s><s>[INST] Tell me a joke. [/INST]"));
    }

    // meta-llama/Meta-Llama-3-8B-Instruct
    private const string Llama3Template = """{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}""";

    [Test]
    public void Llama3()
    {
        Assert.That(Render(Llama3Template, Conversation, "<|begin_of_text|>", "<|end_of_text|>"), Is.EqualTo(
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>" +
            "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>" +
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|>" +
            "<|start_header_id|>user<|end_header_id|>\n\nTell me a joke.<|eot_id|>" +
            "<|start_header_id|>assistant<|end_header_id|>\n\n"));
        Assert.That(Render(Llama3Template, Conversation, "<|begin_of_text|>", "<|end_of_text|>", GenerationPrompt.Omit), Does.EndWith(
            "Tell me a joke.<|eot_id|>"));
    }

    // mistralai/Mistral-7B-Instruct-v0.1: no system role.
    private const string MistralTemplate = """{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}""";

    [Test]
    public void Mistral()
    {
        Assert.That(Render(MistralTemplate, WithoutSystem, "<s>", "</s>"), Is.EqualTo(
            "<s>[INST] Hi there [/INST]Hello! How can I help?</s>[INST] Tell me a joke.\n [/INST]"));
        var e = Assert.Throws<ChatTemplateException>(() => Render(MistralTemplate, Conversation, "<s>", "</s>"))!;
        Assert.That(e.RaisedByTemplate, Is.True);
        Assert.That(e.Message, Is.EqualTo("Conversation roles must alternate user/assistant/user/assistant/..."));
    }

    // Qwen/Qwen2-7B-Instruct (ChatML with a default system message).
    private const string Qwen2Template = """{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}""";

    [Test]
    public void ChatMLQwen2()
    {
        Assert.That(Render(Qwen2Template, Conversation, "", "<|im_end|>"), Is.EqualTo(
            "<|im_start|>system\nYou are terse.<|im_end|>\n" +
            "<|im_start|>user\nHi there<|im_end|>\n" +
            "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n" +
            "<|im_start|>user\nTell me a joke.\n<|im_end|>\n" +
            "<|im_start|>assistant\n"));
        Assert.That(Render(Qwen2Template, WithoutSystem, "", "<|im_end|>", GenerationPrompt.Omit), Is.EqualTo(
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" +
            "<|im_start|>user\nHi there<|im_end|>\n" +
            "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n" +
            "<|im_start|>user\nTell me a joke.\n<|im_end|>\n"));
    }

    [Test]
    public void Phi3FromVocabularyFile()
    {
        // The template shipped in llama.cpp's phi-3 vocabulary GGUF (Phi-3-mini's first release): system messages are dropped.
        using var gguf = GgufFile.Open(TestData.Path("vocab/ggml-vocab-phi-3.gguf"));
        string template = gguf.GetString("tokenizer.chat_template")!;
        Assert.That(template, Does.StartWith("{{ bos_token }}{% for message in messages %}"));
        Assert.That(Render(template, Conversation, "<s>", "<|endoftext|>"), Is.EqualTo(
            "<s><|user|>\nHi there<|end|>\n<|assistant|>\nHello! How can I help?<|end|>\n<|user|>\nTell me a joke.\n<|end|>\n<|assistant|>\n"));
    }

    // microsoft/Phi-3.5-mini-instruct (system role, EOS when no generation prompt).
    private const string Phi35Template = """{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}""";

    [Test]
    public void Phi35()
    {
        Assert.That(Render(Phi35Template, Conversation, "<s>", "<|endoftext|>"), Is.EqualTo(
            "<|system|>\nYou are terse.<|end|>\n<|user|>\nHi there<|end|>\n<|assistant|>\nHello! How can I help?<|end|>\n<|user|>\nTell me a joke.\n<|end|>\n<|assistant|>\n"));
        Assert.That(Render(Phi35Template, WithoutSystem, "<s>", "<|endoftext|>", GenerationPrompt.Omit), Does.EndWith(
            "<|user|>\nTell me a joke.\n<|end|>\n<|endoftext|>"));
    }

    // google/gemma-7b-it: no system role; the assistant is "model"; contents are trimmed.
    private const string GemmaTemplate = """{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}""";

    [Test]
    public void Gemma()
    {
        Assert.That(Render(GemmaTemplate, WithoutSystem, "<bos>", "<eos>"), Is.EqualTo(
            "<bos><start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\nHello! How can I help?<end_of_turn>\n" +
            "<start_of_turn>user\nTell me a joke.<end_of_turn>\n<start_of_turn>model\n"));
        var e = Assert.Throws<ChatTemplateException>(() => Render(GemmaTemplate, Conversation, "<bos>", "<eos>"))!;
        Assert.That(e.Message, Is.EqualTo("System role not supported"));
    }

    // Qwen/Qwen3-8B: ChatML; a namespace found by walking the messages backwards; reasoning split off earlier answers.
    private const string Qwen3Template = """
        {%- if tools %}
            {{- '<|im_start|>system\n' }}
            {%- if messages[0].role == 'system' %}
                {{- messages[0].content + '\n\n' }}
            {%- endif %}
            {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
            {%- for tool in tools %}
                {{- "\n" }}
                {{- tool | tojson }}
            {%- endfor %}
            {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
        {%- else %}
            {%- if messages[0].role == 'system' %}
                {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
            {%- endif %}
        {%- endif %}
        {%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
        {%- for message in messages[::-1] %}
            {%- set index = (messages|length - 1) - loop.index0 %}
            {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
                {%- set ns.multi_step_tool = false %}
                {%- set ns.last_query_index = index %}
            {%- endif %}
        {%- endfor %}
        {%- for message in messages %}
            {%- if message.content is string %}
                {%- set content = message.content %}
            {%- else %}
                {%- set content = '' %}
            {%- endif %}
            {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
                {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
            {%- elif message.role == "assistant" %}
                {%- set reasoning_content = '' %}
                {%- if message.reasoning_content is string %}
                    {%- set reasoning_content = message.reasoning_content %}
                {%- else %}
                    {%- if '</think>' in content %}
                        {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                        {%- set content = content.split('</think>')[-1].lstrip('\n') %}
                    {%- endif %}
                {%- endif %}
                {%- if loop.index0 > ns.last_query_index %}
                    {%- if loop.last or (not loop.last and reasoning_content) %}
                        {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
                    {%- else %}
                        {{- '<|im_start|>' + message.role + '\n' + content }}
                    {%- endif %}
                {%- else %}
                    {{- '<|im_start|>' + message.role + '\n' + content }}
                {%- endif %}
                {%- if message.tool_calls %}
                    {%- for tool_call in message.tool_calls %}
                        {%- if (loop.first and content) or (not loop.first) %}
                            {{- '\n' }}
                        {%- endif %}
                        {%- if tool_call.function %}
                            {%- set tool_call = tool_call.function %}
                        {%- endif %}
                        {{- '<tool_call>\n{"name": "' }}
                        {{- tool_call.name }}
                        {{- '", "arguments": ' }}
                        {%- if tool_call.arguments is string %}
                            {{- tool_call.arguments }}
                        {%- else %}
                            {{- tool_call.arguments | tojson }}
                        {%- endif %}
                        {{- '}\n</tool_call>' }}
                    {%- endfor %}
                {%- endif %}
                {{- '<|im_end|>\n' }}
            {%- elif message.role == "tool" %}
                {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
                    {{- '<|im_start|>user' }}
                {%- endif %}
                {{- '\n<tool_response>\n' }}
                {{- content }}
                {{- '\n</tool_response>' }}
                {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
                    {{- '<|im_end|>\n' }}
                {%- endif %}
            {%- endif %}
        {%- endfor %}
        {%- if add_generation_prompt %}
            {{- '<|im_start|>assistant\n' }}
            {%- if enable_thinking is defined and enable_thinking is false %}
                {{- '<think>\n\n</think>\n\n' }}
            {%- endif %}
        {%- endif %}
        """;

    [Test]
    public void Qwen3()
    {
        Assert.That(Render(Qwen3Template, Conversation, "", "<|im_end|>"), Is.EqualTo(
            "<|im_start|>system\nYou are terse.<|im_end|>\n" +
            "<|im_start|>user\nHi there<|im_end|>\n" +
            "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n" +
            "<|im_start|>user\nTell me a joke.\n<|im_end|>\n" +
            "<|im_start|>assistant\n"));
        // An earlier answer's reasoning is dropped; a reply after the last question keeps it.
        ChatMessage[] thinking =
        [
            ChatMessage.User("2+2?"),
            ChatMessage.Assistant("<think>\nadd them\n</think>\n\n4"),
            ChatMessage.User("and 3+3?"),
            ChatMessage.Assistant("<think>\nagain\n</think>\n\n6"),
        ];
        Assert.That(Render(Qwen3Template, thinking, "", "<|im_end|>", GenerationPrompt.Omit), Is.EqualTo(
            "<|im_start|>user\n2+2?<|im_end|>\n" +
            "<|im_start|>assistant\n4<|im_end|>\n" +
            "<|im_start|>user\nand 3+3?<|im_end|>\n" +
            "<|im_start|>assistant\n<think>\nagain\n</think>\n\n6<|im_end|>\n"));
    }

    // google/gemma-3-1b-it: the system message becomes a prefix of the first user turn.
    private const string Gemma3Template = """
        {{ bos_token }}
        {%- if messages[0]['role'] == 'system' -%}
            {%- if messages[0]['content'] is string -%}
                {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
            {%- else -%}
                {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
            {%- endif -%}
            {%- set loop_messages = messages[1:] -%}
        {%- else -%}
            {%- set first_user_prefix = "" -%}
            {%- set loop_messages = messages -%}
        {%- endif -%}
        {%- for message in loop_messages -%}
            {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
                {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
            {%- endif -%}
            {%- if (message['role'] == 'assistant') -%}
                {%- set role = "model" -%}
            {%- else -%}
                {%- set role = message['role'] -%}
            {%- endif -%}
            {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
            {%- if message['content'] is string -%}
                {{ message['content'] | trim }}
            {%- elif message['content'] is iterable -%}
                {%- for item in message['content'] -%}
                    {%- if item['type'] == 'image' -%}
                        {{ '<start_of_image>' }}
                    {%- elif item['type'] == 'text' -%}
                        {{ item['text'] | trim }}
                    {%- endif -%}
                {%- endfor -%}
            {%- else -%}
                {{ raise_exception("Invalid content type") }}
            {%- endif -%}
            {{ '<end_of_turn>\n' }}
        {%- endfor -%}
        {%- if add_generation_prompt -%}
            {{'<start_of_turn>model\n'}}
        {%- endif -%}
        """;

    [Test]
    public void Gemma3()
    {
        Assert.That(Render(Gemma3Template, Conversation, "<bos>", "<eos>"), Is.EqualTo(
            "<bos><start_of_turn>user\nYou are terse.\n\nHi there<end_of_turn>\n<start_of_turn>model\nHello! How can I help?<end_of_turn>\n" +
            "<start_of_turn>user\nTell me a joke.<end_of_turn>\n<start_of_turn>model\n"));
    }

    // HuggingFaceH4/zephyr-7b-beta (also TinyLlama-1.1B-Chat): one tag per line, relies on trim_blocks.
    private const string ZephyrTemplate = """
        {% for message in messages %}
        {% if message['role'] == 'user' %}
        {{ '<|user|>\n' + message['content'] + eos_token }}
        {% elif message['role'] == 'system' %}
        {{ '<|system|>\n' + message['content'] + eos_token }}
        {% elif message['role'] == 'assistant' %}
        {{ '<|assistant|>\n'  + message['content'] + eos_token }}
        {% endif %}
        {% if loop.last and add_generation_prompt %}
        {{ '<|assistant|>' }}
        {% endif %}
        {% endfor %}
        """;

    [Test]
    public void ZephyrAndTinyLlama()
    {
        Assert.That(Render(ZephyrTemplate, Conversation, "<s>", "</s>"), Is.EqualTo(
            "<|system|>\nYou are terse.</s>\n<|user|>\nHi there</s>\n<|assistant|>\nHello! How can I help?</s>\n" +
            "<|user|>\nTell me a joke.\n</s>\n<|assistant|>\n"));
        Assert.That(Render(ZephyrTemplate, Conversation, "<s>", "</s>", GenerationPrompt.Omit), Does.EndWith("<|user|>\nTell me a joke.\n</s>\n"));
    }

    // mistralai/Mistral-7B-Instruct-v0.3 style (system folded into the last user turn; selectattr, "-" whitespace control).
    private const string Mistral3Template = """
        {%- if messages[0]["role"] == "system" %}
            {%- set system_message = messages[0]["content"] %}
            {%- set loop_messages = messages[1:] %}
        {%- else %}
            {%- set loop_messages = messages %}
        {%- endif %}
        {%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

        {{- bos_token }}
        {%- for message in loop_messages %}
            {%- if message["role"] == "user" %}
                {%- if loop.last and system_message is defined %}
                    {{- "[INST] " + system_message + "\n\n" + message["content"] + "[/INST]" }}
                {%- else %}
                    {{- "[INST] " + message["content"] + "[/INST]" }}
                {%- endif %}
            {%- elif message["role"] == "assistant" %}
                {{- " " + message["content"]|trim + eos_token}}
            {%- else %}
                {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
            {%- endif %}
        {%- endfor %}
        """;

    [Test]
    public void MistralV3WithSystem()
    {
        Assert.That(Render(Mistral3Template, Conversation, "<s>", "</s>"), Is.EqualTo(
            "<s>[INST] Hi there[/INST] Hello! How can I help?</s>[INST] You are terse.\n\nTell me a joke.\n[/INST]"));
    }
}
