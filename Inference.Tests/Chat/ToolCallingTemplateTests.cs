using System.Text.Json;
using Inference.Chat;

namespace Inference.Tests.Chat;

/// <summary>
/// Tool-calling templates in the style of current models (Command-R7B's macros and namespaces, Llama 3.2's tool JSON,
/// Qwen2.5's tool calls), rendered with messages that carry tool calls. The expected texts are the output of Python's
/// Jinja2 3.1.6 with Hugging Face's settings (trim_blocks, lstrip_blocks, loopcontrols, tojson as json.dumps).
/// </summary>
public class ToolCallingTemplateTests
{
    private const string Data = """"
{"messages": [
 {"role": "system", "content": "Be nice."},
 {"role": "user", "content": "  What's the weather?  "},
 {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}}, {"id": "c2", "function": {"name": "get_time", "arguments": {}}}]},
 {"role": "tool", "tool_call_id": "c1", "content": "18C \"sunny\""},
 {"role": "tool", "tool_call_id": "c2", "content": "noon"},
 {"role": "assistant", "content": "It is 18C and sunny at noon."},
 {"role": "user", "content": "Thanks"}
],
"tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
"bos_token": "<s>", "eos_token": "</s>", "add_generation_prompt": true}
"""";

    private const string CommandStyle = """"
{%- macro tool_call_id_to_int(messages, tool_call_id) %}
{%- set counter = namespace(value=0) %}
{%- set seen = namespace(value=false) %}
{%- for msg in messages %}
    {%- if msg.tool_calls %}
        {%- for tool_call in msg.tool_calls %}
            {%- if tool_call.id == tool_call_id and not seen.value -%}
                {{ counter.value }}
                {%- set seen.value = true %}
            {%- endif %}
            {%- set counter.value = counter.value + 1 %}
        {%- endfor %}
    {%- endif %}
{%- endfor %}
{%- endmacro %}
{%- macro fmt(messages, m) -%}
    {
        "id": "{{ tool_call_id_to_int(messages, m.tool_call_id) }}",
        "results": {{ m.content|tojson }}
    }
{%- endmacro -%}
{%- if messages and messages[0]['role']|lower == 'system' %}{%- set pre = messages[0]['content'] %}{% endif %}
{%- set ids_seen = namespace(value=[]) %}
<|SYS|>{{ pre }}
{%- for message in messages %}
    {%- if message.role|lower == 'system' and not (loop.first and pre) %}
<|S|>{{ message.content }}
    {%- elif message.role|lower == 'user' %}
<|U|>{{ message.content }}
    {%- elif message.role|lower == 'assistant' %}
<|A|>{% if message.tool_calls %}[
    {% for tc in message.tool_calls %}
    {"name": "{{ tc['function']['name'] }}", "args": {{ tc['function']['arguments']|tojson }}}{% if not loop.last %},{% endif %}

    {% endfor %}
]{% else %}{{ message.content }}{% endif %}
    {% elif message.role|lower == 'tool' and message.tool_call_id not in ids_seen.value %}
<|T|>[
{{ fmt(messages, message) }}
    {%- for msg in messages[loop.index0 + 1:] %}
        {%- if msg.role|lower == 'tool' %},
{{ fmt(messages, msg) }}
            {%- set ids_seen.value = ids_seen.value + [msg.tool_call_id] %}
        {%- else %}
            {%- break %}
        {%- endif %}
    {%- endfor %}
]
    {%- endif %}
{%- endfor %}<|END|>

"""";

    private const string CommandStyleExpected = """"
<|SYS|>Be nice.<|U|>  What's the weather?  <|A|>[
    {"name": "get_weather", "args": {"city": "Paris", "unit": "C"}},
    {"name": "get_time", "args": {}}
]<|T|>[
{
        "id": "0",
        "results": "18C \"sunny\""
    },
{
        "id": "1",
        "results": "noon"
    }]<|A|>It is 18C and sunny at noon.<|U|>Thanks<|END|>
"""";

    private const string LlamaToolStyle = """"
{{- bos_token }}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{%- if tools is not none or system_message != '' %}
    {{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
    {{- system_message }}
    {%- if tools is not none %}
        {%- if system_message != "" %}{{- "\n\n" }}{%- endif %}
        {{- "Available Tools:\n" }}
        {%- for t in tools %}
            {{- t | tojson(indent=4) }}
            {{- "\n\n" }}
        {%- endfor %}
    {%- endif %}
    {{- "<|eot_id|>" }}
{%- endif %}
{%- for message in messages %}
    {%- if not (message.role == "tool" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}
        {%- if message['content'] is string %}
            {{- message['content'] | trim }}
        {%- else %}
            {%- for item in message['content'] %}
                {%- if item.type == 'text' %}{{- item.text | trim }}{%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|eot_id|>' }}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {%- if not tool_call.id is defined %}{{- out }}{%- else %}{{- out[:-1] }}{{- ', "id": "' + tool_call.id + '"}' }}{%- endif %}
            {%- if not loop.last %}{{- ", " }}{%- else %}{{- "]<|eot_id|>" }}{%- endif %}
        {%- endfor %}
    {%- elif message.role == "tool" %}
        {{- '{"content": ' + (message.content | tojson) + '}' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}

"""";

    private const string LlamaToolStyleExpected = """"
<s><|start_header_id|>system<|end_header_id|>

Be nice.

Available Tools:
{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {
                    "type": "string"
                }
            },
            "required": [
                "city"
            ]
        }
    }
}

<|eot_id|><|start_header_id|>user<|end_header_id|>

What's the weather?<|eot_id|>[{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}, "id": "c1"}, {"name": "get_time", "arguments": {}, "id": "c2"}]<|eot_id|>{"content": "18C \"sunny\""}{"content": "noon"}<|start_header_id|>assistant<|end_header_id|>

It is 18C and sunny at noon.<|eot_id|><|start_header_id|>user<|end_header_id|>

Thanks<|eot_id|><|start_header_id|>assistant<|end_header_id|>


"""";

    private const string QwenToolStyle = """"
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}{{- '\n' + message.content }}{%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}{{- tool_call.arguments | tojson }}{{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\n<tool_response>\n' }}{{- message.content }}{{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}{{- '<|im_end|>\n' }}{%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}
{{ "%d-%s" if false else [1, 2.5, none, true, 'x'] }} {{ {'k': [1, {'z': none}]} }} {{ 10 / 4 }} {{ 3.0 }} {{ 1e3 if false else 2 ** -1 }}

"""";

    private const string QwenToolStyleExpected = """"
<|im_start|>user
  What's the weather?  <|im_end|>
<|im_start|>assistant
<tool_call>
{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}
</tool_call>
<tool_call>
{"name": "get_time", "arguments": {}}
</tool_call><|im_end|>
<|im_start|>user
<tool_response>
18C "sunny"
</tool_response>
<tool_response>
noon
</tool_response><|im_end|>
<|im_start|>assistant
It is 18C and sunny at noon.<|im_end|>
<|im_start|>user
Thanks<|im_end|>
<|im_start|>assistant
[1, 2.5, None, True, 'x'] {'k': [1, {'z': None}]} 2.5 3.0 0.5
"""";

    [TestCase(CommandStyle, CommandStyleExpected)]
    [TestCase(LlamaToolStyle, LlamaToolStyleExpected)]
    [TestCase(QwenToolStyle, QwenToolStyleExpected)]
    public void RendersLikeJinja2(string template, string expected)
    {
        // The data goes in as plain values, the way Jinja2 got it.
        using var json = JsonDocument.Parse(Data);
        var globals = new Dictionary<string, object?>();
        foreach (var property in json.RootElement.EnumerateObject()) globals[property.Name] = TemplateValues.FromClr(Convert(property.Value));
        Assert.That(TemplateEvaluator.Render(TemplateParser.Parse(template), globals, TemplateLimits.Default), Is.EqualTo(expected));
    }

    [TestCase(CommandStyle, CommandStyleExpected)]
    [TestCase(LlamaToolStyle, LlamaToolStyleExpected)]
    [TestCase(QwenToolStyle, QwenToolStyleExpected)]
    public void ChatMessagesWithToolCallsAndResults_RenderLikeJinja2(string template, string expected)
    {
        // The same conversation as Data, through the public types: ChatMessage tool calls and results, ChatTool.
        ChatMessage[] messages =
        [
            ChatMessage.System("Be nice."),
            ChatMessage.User("  What's the weather?  "),
            ChatMessage.AssistantToolCalls([new ChatToolCall("c1", "get_weather", """{"city":"Paris","unit":"C"}"""), new ChatToolCall("c2", "get_time", "{}")]),
            ChatMessage.ToolResult("c1", "18C \"sunny\""),
            ChatMessage.ToolResult("c2", "noon"),
            ChatMessage.Assistant("It is 18C and sunny at noon."),
            ChatMessage.User("Thanks"),
        ];
        ChatTool[] tools = [new ChatTool("get_weather", "Weather", """{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}""")];
        var options = new ChatTemplateOptions
        {
            BosToken = "<s>",
            EosToken = "</s>",
            GenerationPrompt = GenerationPrompt.Add,
            Variables = ToolCalls.WithTools(new Dictionary<string, object?>(), tools),
        };
        Assert.That(ChatTemplate.Parse(template).Render(messages, options), Is.EqualTo(expected));
    }

    [Test]
    public void JsonNumbers_InArgumentsAndSchemas_KeepTheirKind()
    {
        // json.dumps(json.loads('{"days": 3, "x": 2.5, "big": 1e3}')) == '{"days": 3, "x": 2.5, "big": 1000.0}'
        const string template = "{% for m in messages %}{% for tc in m.tool_calls %}{{ tc.function.arguments | tojson }}{% endfor %}{% endfor %}|{{ tools[0].function.parameters | tojson }}";
        ChatMessage[] messages = [ChatMessage.AssistantToolCalls([new ChatToolCall("c", "f", """{"days": 3, "x": 2.5, "big": 1e3}""")])];
        ChatTool[] tools = [new ChatTool("f", null, """{"type": "integer", "minimum": 1}""")];
        string text = ChatTemplate.Parse(template).Render(messages, new ChatTemplateOptions { Variables = ToolCalls.WithTools(new Dictionary<string, object?>(), tools) });
        Assert.That(text, Is.EqualTo("""{"days": 3, "x": 2.5, "big": 1000.0}|{"type": "integer", "minimum": 1}"""));
    }

    private static object? Convert(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Object => e.EnumerateObject().ToDictionary(p => p.Name, p => Convert(p.Value)),
        JsonValueKind.Array => e.EnumerateArray().Select(Convert).ToList(),
        JsonValueKind.String => e.GetString(),
        JsonValueKind.Number => e.TryGetInt64(out long l) ? l : (object)e.GetDouble(),
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        _ => null,
    };
}
