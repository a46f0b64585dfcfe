using System.Diagnostics;
using System.Text.Json;
using Inference.Chat;
using Inference.Engine;

namespace Inference.Server;

/// <summary>The handlers of <c>/v1/models</c>, <c>/v1/completions</c> and <c>/v1/chat/completions</c>.</summary>
internal static class OpenAiEndpoints
{
    public enum Kind
    {
        Completion,
        Chat,
    }

    public static IResult Models(HttpContext context, ITextGenerator engine, ServerOptions options) =>
        Results.Json(new
        {
            @object = "list",
            data = new[] { new { id = ModelId(engine, options), @object = "model", created = 0L, owned_by = "inference" } },
        }, JsonOptions.Default);

    private static string ModelId(ITextGenerator engine, ServerOptions options) => options.ModelId ?? engine.ModelName;

    public static async Task HandleAsync(HttpContext context, Kind kind)
    {
        var engine = context.RequestServices.GetRequiredService<ITextGenerator>();
        var options = context.RequestServices.GetRequiredService<ServerOptions>();
        var metrics = context.RequestServices.GetRequiredService<ServerMetrics>();
        long started = Stopwatch.GetTimestamp();
        string endpoint = kind == Kind.Chat ? "chat.completions" : "completions";
        int status = 200;
        // Ends every stream of this request that is still queued or running when the handler leaves, however it leaves.
        using var abandon = CancellationTokenSource.CreateLinkedTokenSource(context.RequestAborted);
        try
        {
            var request = await ReadRequestAsync(context, kind, options).ConfigureAwait(false);
            if (request.Echo && request.PromptTokens is not null && engine is not InferenceEngine)
                throw OpenAiError.BadRequest("'echo' of a token prompt needs a local model to detokenize it (not available in front of a cluster)", "echo");
            var prompts = await TokenizeAsync(engine, options, kind, request, context.RequestAborted).ConfigureAwait(false);
            if (request.ToolChoice is "required" or "function") request = await ForceToolCallAsync(engine, options, request, context.RequestAborted).ConfigureAwait(false);
            var streams = Start(engine, prompts, request, abandon);
            long promptTokens = 0;
            foreach (var p in prompts) promptTokens += p.Length;
            metrics.PromptTokens.Add(promptTokens);
            var call = new Call(context, metrics, kind, request, ModelId(engine, options), prompts, streams, (engine as InferenceEngine)?.Tokenizer);
            if (request.Stream) await call.StreamAsync().ConfigureAwait(false);
            else await call.RespondAsync().ConfigureAwait(false);
        }
        catch (OpenAiError e)
        {
            status = e.Status;
            await WriteErrorAsync(context, e).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
        {
            status = 499; // the client went away
        }
        catch (RequestQueueFullException e)
        {
            // A cluster's requests start when read: every replica tried had a full queue.
            status = 429;
            await WriteErrorAsync(context, new OpenAiError(429, e.Message, code: "rate_limit_exceeded", type: "requests") { RetryAfterSeconds = 1 }).ConfigureAwait(false);
        }
        catch (ArgumentException e) when (engine is not InferenceEngine)
        {
            // A cluster replica refused the request (a local engine refuses it before the response begins, in Start).
            status = 400;
            await WriteErrorAsync(context, OpenAiError.BadRequest(e.Message.Split(" (Parameter")[0], kind == Kind.Chat ? "messages" : "prompt")).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            // NOTE: bad requests are all caught above as OpenAiError; what reaches here is a server fault.
            status = 500;
            await WriteErrorAsync(context, new OpenAiError(500, "internal error: " + e.Message, type: "server_error")).ConfigureAwait(false);
        }
        finally
        {
            abandon.Cancel();
            var tags = new TagList { { "endpoint", endpoint }, { "status", status } };
            metrics.Requests.Add(1, tags);
            metrics.RequestDuration.Record(Stopwatch.GetElapsedTime(started).TotalSeconds, tags);
        }
    }

    private static async Task WriteErrorAsync(HttpContext context, OpenAiError error)
    {
        if (context.RequestAborted.IsCancellationRequested) return;
        if (!context.Response.HasStarted)
        {
            await error.WriteAsync(context).ConfigureAwait(false);
            return;
        }
        // Headers are gone once an event stream has begun: report the error as an event and end the stream.
        await context.Response.WriteAsync("data: " + JsonSerializer.Serialize(error.ToBody(), JsonOptions.Default) + "\n\n", context.RequestAborted).ConfigureAwait(false);
    }

    private static async Task<OpenAiRequest> ReadRequestAsync(HttpContext context, Kind kind, ServerOptions options)
    {
        long limit = options.MaxRequestBodyBytes;
        var tooLarge = new OpenAiError(413, $"the request body is larger than {limit} bytes (the server's limit)", code: "request_too_large");
        if (context.Request.ContentLength > limit) throw tooLarge;
        // NOTE: a body without Content-Length (chunked) is cut off by the server while it is read.
        if (context.Features.Get<Microsoft.AspNetCore.Http.Features.IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } feature)
            feature.MaxRequestBodySize = limit;
        JsonDocument document;
        try
        {
            document = await JsonDocument.ParseAsync(context.Request.Body, default, context.RequestAborted).ConfigureAwait(false);
        }
        catch (JsonException e)
        {
            throw OpenAiError.BadRequest("the request body is not valid JSON: " + e.Message);
        }
        catch (BadHttpRequestException e) when (e.StatusCode == StatusCodes.Status413PayloadTooLarge)
        {
            throw tooLarge;
        }
        using (document)
        {
            return kind == Kind.Chat
                ? OpenAiRequest.ParseChat(document.RootElement, options.MaxChoices)
                : OpenAiRequest.ParseCompletion(document.RootElement, options.MaxChoices, options.MaxPrompts);
        }
    }

    private static async Task<List<int[]>> TokenizeAsync(ITextGenerator engine, ServerOptions options, Kind kind, OpenAiRequest request, CancellationToken cancellationToken)
    {
        if (kind == Kind.Chat)
        {
            try
            {
                var tools = request.ToolChoice == "none" ? [] : request.Tools;
                return [await engine.TokenizeChatAsync(request.Messages, new ChatPromptOptions { Template = options.ChatTemplate, Tools = tools }, cancellationToken).ConfigureAwait(false)];
            }
            catch (ChatTemplateException e)
            {
                throw OpenAiError.BadRequest("the chat template rejected the messages: " + e.Message, "messages");
            }
            catch (InvalidOperationException e)
            {
                throw OpenAiError.BadRequest(e.Message + " (start the server with --chat-template FILE)", "messages", "no_chat_template");
            }
        }
        if (request.PromptTokens is { } tokens) return [tokens.ToArray()];
        var prompts = new List<int[]>(request.Prompts.Count);
        foreach (var prompt in request.Prompts) prompts.Add(await engine.TokenizeAsync(prompt, cancellationToken).ConfigureAwait(false));
        return prompts;
    }

    /// <summary>Constrains the reply to a call, in the template's format, of one of the tools (or of the named one).</summary>
    private static async Task<OpenAiRequest> ForceToolCallAsync(ITextGenerator engine, ServerOptions options, OpenAiRequest request, CancellationToken cancellationToken)
    {
        if (request.Sampling.Constraint is not null)
            throw OpenAiError.BadRequest("'tool_choice' that requires a call cannot be combined with 'response_format' or guided decoding", "tool_choice");
        var template = options.ChatTemplate ?? await engine.GetChatTemplateAsync(cancellationToken).ConfigureAwait(false);
        var format = ToolCalls.DetectFormat(template?.Source);
        try
        {
            var constraint = ToolCalls.RequiredCallConstraint(request.Tools, request.ToolChoiceName, format);
            return request with { Sampling = request.Sampling with { Constraint = constraint } };
        }
        catch (Inference.Constraints.InvalidConstraintException e)
        {
            throw OpenAiError.BadRequest("a tool's parameters schema cannot be enforced: " + e.Message, "tools");
        }
    }

    // One stream per (prompt, choice), created and queued eagerly so that invalid input and a full queue fail before
    // any response is written; a refused request cancels the streams it already queued.
    private static GenerationStream[] Start(ITextGenerator engine, List<int[]> prompts, OpenAiRequest request, CancellationTokenSource abandon)
    {
        var cancellationToken = abandon.Token;
        string param = request.Messages.Count > 0 ? "messages" : "prompt";
        var streams = new GenerationStream[prompts.Count * request.N];
        for (int p = 0; p < prompts.Count; p++)
        {
            try
            {
                if (engine is InferenceEngine local)
                {
                    // n choices of one prompt share its prefill: the engine forks the prompt's KV (choice i seeded seed + i).
                    var choices = local.GenerateParallelAsync(prompts[p], request.N, request.Sampling, cancellationToken);
                    for (int i = 0; i < request.N; i++) streams[p * request.N + i] = choices[i];
                }
                else
                {
                    // A remote generator (a cluster): one request per choice, choice i seeded seed + i.
                    for (int i = 0; i < request.N; i++)
                    {
                        var sampling = request.Sampling.Seed is ulong seed ? request.Sampling with { Seed = unchecked(seed + (ulong)i) } : request.Sampling;
                        streams[p * request.N + i] = engine.GenerateAsync(prompts[p], sampling, cancellationToken);
                    }
                }
            }
            catch (ArgumentOutOfRangeException e)
            {
                throw OpenAiError.BadRequest(e.Message.Split(" (Parameter")[0], param);
            }
            catch (NotSupportedException e)
            {
                throw OpenAiError.BadRequest(e.Message, param);
            }
            catch (ArgumentException e)
            {
                throw OpenAiError.BadRequest(e.Message.Split(" (Parameter")[0], param, "context_length_exceeded");
            }
        }
        try
        {
            foreach (var stream in streams) stream.Start();
        }
        catch (RequestQueueFullException e)
        {
            abandon.Cancel();
            throw new OpenAiError(429, e.Message, code: "rate_limit_exceeded", type: "requests") { RetryAfterSeconds = 1 };
        }
        return streams;
    }

    private static string TokenText(Inference.Tokenization.ModelTokenizer tokenizer, int tokenId) =>
        System.Text.Encoding.UTF8.GetString(tokenizer.GetTokenBytes(tokenId));

    private static int[] TokenBytes(Inference.Tokenization.ModelTokenizer tokenizer, int tokenId)
    {
        var bytes = tokenizer.GetTokenBytes(tokenId);
        var result = new int[bytes.Length];
        for (int i = 0; i < bytes.Length; i++) result[i] = bytes[i];
        return result;
    }

    /// <summary>The legacy completions' logprobs object: parallel lists of tokens, their log-probabilities, alternatives and text offsets.</summary>
    private sealed class CompletionLogprobs(int offset = 0)
    {
        private readonly List<string> _tokens = [];
        private readonly List<float?> _logprobs = [];
        private readonly List<Dictionary<string, float>?> _top = [];
        private readonly List<int> _offsets = [];
        private int _offset = offset;

        /// <summary>The prompt's tokens; the first has no log-probability (nothing comes before it).</summary>
        public void AddPrompt(Inference.Tokenization.ModelTokenizer tokenizer, IReadOnlyList<int> prompt, IReadOnlyList<Inference.Sampling.TokenLogprobs>? scored)
        {
            for (int i = 0; i < prompt.Count; i++)
            {
                if (i > 0 && scored is not null) Add(tokenizer, scored[i - 1]);
                else Append(TokenText(tokenizer, prompt[i]), null, null);
            }
        }

        public void Add(Inference.Tokenization.ModelTokenizer tokenizer, Inference.Sampling.TokenLogprobs t)
        {
            var top = new Dictionary<string, float>(t.Top.Count);
            foreach (var a in t.Top) top.TryAdd(TokenText(tokenizer, a.TokenId), a.Logprob);
            Append(TokenText(tokenizer, t.TokenId), t.Logprob, top);
        }

        private void Append(string token, float? logprob, Dictionary<string, float>? top)
        {
            _tokens.Add(token);
            _logprobs.Add(logprob);
            _top.Add(top);
            _offsets.Add(_offset);
            _offset += token.Length;
        }

        public object ToJson() => new { tokens = _tokens, token_logprobs = _logprobs, top_logprobs = _top, text_offset = _offsets };
    }

    private static object[] ToolCallObjects(IReadOnlyList<ChatToolCall> calls)
    {
        var result = new object[calls.Count];
        for (int i = 0; i < calls.Count; i++)
            result[i] = new { id = calls[i].Id, type = "function", function = new { name = calls[i].Name, arguments = calls[i].Arguments } };
        return result;
    }

    private static string FinishReasonText(FinishReason reason) => reason == FinishReason.Length ? "length" : "stop";

    /// <summary>One request being answered: its streams and how their output is written.</summary>
    private sealed class Call(HttpContext context, ServerMetrics metrics, Kind kind, OpenAiRequest request,
        string modelId, List<int[]> prompts, GenerationStream[] streams, Inference.Tokenization.ModelTokenizer? localTokenizer)
    {
        // NOTE: token texts (logprobs, echoed token prompts) need the model's tokenizer; a cluster front end has none.
        private Inference.Tokenization.ModelTokenizer tokenizer => localTokenizer ?? throw OpenAiError.BadRequest("log-probabilities and echoed token prompts need a local model (not available in front of a cluster)");

        private readonly string _id = (kind == Kind.Chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N");
        private readonly long _created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        private readonly SemaphoreSlim _writeLock = new(1, 1);

        public async Task RespondAsync()
        {
            var completions = await Task.WhenAll(streams.Select(RunAsync)).ConfigureAwait(false);
            var choices = new object[completions.Length];
            for (int i = 0; i < completions.Length; i++)
            {
                var c = completions[i];
                if (kind == Kind.Chat && request.ToolsActive && ToolCalls.TryParse(c.Text, out var content, out var calls))
                {
                    object? logprobs = c.Logprobs is { } lp ? new { content = ChatLogprobs(lp), refusal = (object?)null } : null;
                    choices[i] = new
                    {
                        index = i,
                        message = new { role = "assistant", content = content.Length > 0 ? content : null, tool_calls = ToolCallObjects(calls) },
                        logprobs,
                        finish_reason = "tool_calls",
                    };
                }
                else if (kind == Kind.Chat)
                {
                    object? logprobs = c.Logprobs is { } lp ? new { content = ChatLogprobs(lp), refusal = (object?)null } : null;
                    choices[i] = new { index = i, message = new { role = "assistant", content = c.Text }, logprobs, finish_reason = FinishReasonText(c.FinishReason) };
                }
                else
                {
                    var logprobs = c.Logprobs is not null ? new CompletionLogprobs() : null;
                    string text = c.Text;
                    if (request.Echo)
                    {
                        string prompt = PromptText(i / request.N);
                        logprobs?.AddPrompt(tokenizer, c.PromptTokenIds, c.PromptLogprobs);
                        text = prompt + text;
                    }
                    if (c.Logprobs is { } lp) foreach (var t in lp) logprobs!.Add(tokenizer, t);
                    choices[i] = new { text, index = i, logprobs = logprobs?.ToJson(), finish_reason = FinishReasonText(c.FinishReason) };
                }
            }
            var body = new
            {
                id = _id,
                @object = kind == Kind.Chat ? "chat.completion" : "text_completion",
                created = _created,
                model = modelId,
                choices,
                usage = Usage(completions),
            };
            await context.Response.WriteAsJsonAsync(body, JsonOptions.Default, context.RequestAborted).ConfigureAwait(false);
        }

        public async Task StreamAsync()
        {
            var response = context.Response;
            response.ContentType = "text/event-stream";
            response.Headers.CacheControl = "no-cache";
            await response.StartAsync(context.RequestAborted).ConfigureAwait(false);
            var completions = await Task.WhenAll(streams.Select((s, i) => StreamChoiceAsync(s, i))).ConfigureAwait(false);
            if (request.IncludeUsage)
                await WriteEventAsync(new
                {
                    id = _id,
                    @object = ChunkObject,
                    created = _created,
                    model = modelId,
                    choices = Array.Empty<object>(),
                    usage = Usage(completions),
                }).ConfigureAwait(false);
            await WriteRawAsync("[DONE]").ConfigureAwait(false);
        }

        private string ChunkObject => kind == Kind.Chat ? "chat.completion.chunk" : "text_completion";

        private async Task<Completion> StreamChoiceAsync(GenerationStream stream, int index)
        {
            if (kind == Kind.Chat) await WriteChunkAsync(index, "", role: "assistant", finishReason: null).ConfigureAwait(false);
            bool echoed = !request.Echo;
            int offset = 0;
            async Task EchoAsync()
            {
                // The prompt (and its log-probabilities, known before the first token) goes out first.
                echoed = true;
                var scored = request.Sampling.PromptLogprobs is not null ? new CompletionLogprobs() : null;
                var prompt = PromptText(index / request.N);
                scored?.AddPrompt(tokenizer, prompts[index / request.N], stream.PromptLogprobs);
                await WriteChunkAsync(index, prompt, role: null, finishReason: null, scored?.ToJson()).ConfigureAwait(false);
                offset = prompt.Length;
            }
            // NOTE: with tools the reply is held until it ends, then sent as tool_calls deltas or as content: whether
            // text is a call is known only once it is complete.
            bool hold = kind == Kind.Chat && request.ToolsActive;
            await foreach (var token in stream.ConfigureAwait(false))
            {
                if (!echoed) await EchoAsync().ConfigureAwait(false);
                if (hold || (token.Text.Length == 0 && token.Logprobs is null)) continue;
                object? logprobs = null;
                if (token.Logprobs is { } lp)
                {
                    if (kind == Kind.Chat) logprobs = new { content = ChatLogprobs([lp]), refusal = (object?)null };
                    else
                    {
                        var one = new CompletionLogprobs(offset);
                        one.Add(tokenizer, lp);
                        logprobs = one.ToJson();
                    }
                }
                offset += token.Text.Length;
                await WriteChunkAsync(index, token.Text, role: null, finishReason: null, logprobs).ConfigureAwait(false);
            }
            var completion = await stream.Completion.ConfigureAwait(false);
            if (!echoed) await EchoAsync().ConfigureAwait(false);
            Count(completion);
            if (hold)
            {
                if (ToolCalls.TryParse(completion.Text, out var content, out var calls))
                {
                    if (content.Length > 0) await WriteChunkAsync(index, content, role: null, finishReason: null).ConfigureAwait(false);
                    // As OpenAI streams them: the id, type and name first with empty arguments, then the arguments.
                    for (int c = 0; c < calls.Count; c++)
                    {
                        var call = calls[c];
                        await WriteDeltaAsync(index, new { tool_calls = new[] { new { index = c, id = call.Id, type = "function", function = new { name = call.Name, arguments = "" } } } }).ConfigureAwait(false);
                        await WriteDeltaAsync(index, new { tool_calls = new[] { new { index = c, function = new { arguments = call.Arguments } } } }).ConfigureAwait(false);
                    }
                    await WriteDeltaAsync(index, new { }, "tool_calls").ConfigureAwait(false);
                    return completion;
                }
                if (completion.Text.Length > 0) await WriteChunkAsync(index, completion.Text, role: null, finishReason: null).ConfigureAwait(false);
            }
            await WriteChunkAsync(index, null, role: null, finishReason: FinishReasonText(completion.FinishReason)).ConfigureAwait(false);
            return completion;
        }

        private Task WriteChunkAsync(int index, string? text, string? role, string? finishReason, object? logprobs = null)
        {
            object choice;
            if (kind == Kind.Chat)
            {
                object delta = role is not null ? new { role, content = text } : text is not null ? new { content = text } : new { };
                choice = new { index, delta, logprobs, finish_reason = finishReason };
            }
            else choice = new { text = text ?? "", index, logprobs, finish_reason = finishReason };
            return WriteEventAsync(new { id = _id, @object = ChunkObject, created = _created, model = modelId, choices = new[] { choice } });
        }

        private string PromptText(int prompt) =>
            prompt < request.Prompts.Count ? request.Prompts[prompt] : tokenizer.Decode(prompts[prompt]);

        private object[] ChatLogprobs(IReadOnlyList<Inference.Sampling.TokenLogprobs> tokens)
        {
            var content = new object[tokens.Count];
            for (int i = 0; i < tokens.Count; i++)
            {
                var t = tokens[i];
                var top = new object[t.Top.Count];
                for (int j = 0; j < top.Length; j++)
                    top[j] = new { token = TokenText(tokenizer, t.Top[j].TokenId), logprob = t.Top[j].Logprob, bytes = TokenBytes(tokenizer, t.Top[j].TokenId) };
                content[i] = new { token = TokenText(tokenizer, t.TokenId), logprob = t.Logprob, bytes = TokenBytes(tokenizer, t.TokenId), top_logprobs = top };
            }
            return content;
        }
        private Task WriteDeltaAsync(int index, object delta, string? finishReason = null) =>
            WriteEventAsync(new { id = _id, @object = ChunkObject, created = _created, model = modelId, choices = new[] { new { index, delta, logprobs = (object?)null, finish_reason = finishReason } } });

        private Task WriteEventAsync(object chunk) => WriteRawAsync(JsonSerializer.Serialize(chunk, JsonOptions.Default));

        private async Task WriteRawAsync(string data)
        {
            await _writeLock.WaitAsync(context.RequestAborted).ConfigureAwait(false);
            try
            {
                await context.Response.WriteAsync("data: " + data + "\n\n", context.RequestAborted).ConfigureAwait(false);
                await context.Response.Body.FlushAsync(context.RequestAborted).ConfigureAwait(false);
            }
            finally
            {
                _writeLock.Release();
            }
        }

        private async Task<Completion> RunAsync(GenerationStream stream)
        {
            await foreach (var _ in stream.ConfigureAwait(false))
            {
            }
            var completion = await stream.Completion.ConfigureAwait(false);
            Count(completion);
            return completion;
        }

        private void Count(Completion completion) => metrics.CompletionTokens.Add(completion.Metrics.GeneratedTokens);

        // OpenAI counts each prompt once however many choices it has.
        private object Usage(Completion[] completions)
        {
            long promptTokens = 0, completionTokens = 0;
            for (int p = 0; p < prompts.Count; p++) promptTokens += completions[p * request.N].PromptTokenIds.Count;
            foreach (var c in completions) completionTokens += c.Metrics.GeneratedTokens;
            return new { prompt_tokens = promptTokens, completion_tokens = completionTokens, total_tokens = promptTokens + completionTokens };
        }
    }
}
