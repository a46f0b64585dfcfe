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

    public static IResult Models(HttpContext context, InferenceEngine engine, ServerOptions options) =>
        Results.Json(new
        {
            @object = "list",
            data = new[] { new { id = ModelId(engine, options), @object = "model", created = 0L, owned_by = "inference" } },
        }, JsonOptions.Default);

    private static string ModelId(InferenceEngine engine, ServerOptions options) => options.ModelId ?? engine.ModelName;

    public static async Task HandleAsync(HttpContext context, Kind kind)
    {
        var engine = context.RequestServices.GetRequiredService<InferenceEngine>();
        var options = context.RequestServices.GetRequiredService<ServerOptions>();
        var metrics = context.RequestServices.GetRequiredService<ServerMetrics>();
        long started = Stopwatch.GetTimestamp();
        string endpoint = kind == Kind.Chat ? "chat.completions" : "completions";
        int status = 200;
        try
        {
            var request = await ReadRequestAsync(context, kind, options).ConfigureAwait(false);
            var prompts = Tokenize(engine, options, kind, request);
            var streams = Start(engine, prompts, request, context.RequestAborted);
            long promptTokens = 0;
            foreach (var p in prompts) promptTokens += p.Length;
            metrics.PromptTokens.Add(promptTokens);
            var call = new Call(context, metrics, kind, request, ModelId(engine, options), prompts, streams);
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
        catch (Exception e)
        {
            // NOTE: bad requests are all caught above as OpenAiError; what reaches here is a server fault.
            status = 500;
            await WriteErrorAsync(context, new OpenAiError(500, "internal error: " + e.Message, type: "server_error")).ConfigureAwait(false);
        }
        finally
        {
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
        JsonDocument document;
        try
        {
            document = await JsonDocument.ParseAsync(context.Request.Body, default, context.RequestAborted).ConfigureAwait(false);
        }
        catch (JsonException e)
        {
            throw OpenAiError.BadRequest("the request body is not valid JSON: " + e.Message);
        }
        using (document)
        {
            return kind == Kind.Chat
                ? OpenAiRequest.ParseChat(document.RootElement, options.MaxChoices)
                : OpenAiRequest.ParseCompletion(document.RootElement, options.MaxChoices);
        }
    }

    private static List<int[]> Tokenize(InferenceEngine engine, ServerOptions options, Kind kind, OpenAiRequest request)
    {
        if (kind == Kind.Chat)
        {
            try
            {
                return [engine.TokenizeChat(request.Messages, new ChatPromptOptions { Template = options.ChatTemplate })];
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
        foreach (var prompt in request.Prompts) prompts.Add(engine.Tokenize(prompt));
        return prompts;
    }

    // One stream per (prompt, choice), created eagerly so that invalid input fails before any response is written.
    private static GenerationStream[] Start(InferenceEngine engine, List<int[]> prompts, OpenAiRequest request, CancellationToken cancellationToken)
    {
        string param = request.Messages.Count > 0 ? "messages" : "prompt";
        var streams = new GenerationStream[prompts.Count * request.N];
        for (int p = 0; p < prompts.Count; p++)
            for (int i = 0; i < request.N; i++)
            {
                // Each choice gets its own seed so n choices differ yet repeat for the same request seed.
                var sampling = request.Sampling.Seed is ulong seed ? request.Sampling with { Seed = unchecked(seed + (ulong)i) } : request.Sampling;
                try
                {
                    streams[p * request.N + i] = engine.GenerateAsync(prompts[p], sampling, cancellationToken);
                }
                catch (ArgumentOutOfRangeException e)
                {
                    throw OpenAiError.BadRequest(e.Message.Split(" (Parameter")[0], param);
                }
                catch (ArgumentException e)
                {
                    throw OpenAiError.BadRequest(e.Message.Split(" (Parameter")[0], param, "context_length_exceeded");
                }
            }
        return streams;
    }

    private static string FinishReasonText(FinishReason reason) => reason == FinishReason.Length ? "length" : "stop";

    /// <summary>One request being answered: its streams and how their output is written.</summary>
    private sealed class Call(HttpContext context, ServerMetrics metrics, Kind kind, OpenAiRequest request,
        string modelId, List<int[]> prompts, GenerationStream[] streams)
    {
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
                choices[i] = kind == Kind.Chat
                    ? new { index = i, message = new { role = "assistant", content = c.Text }, logprobs = (object?)null, finish_reason = FinishReasonText(c.FinishReason) }
                    : new { text = c.Text, index = i, logprobs = (object?)null, finish_reason = FinishReasonText(c.FinishReason) };
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
            await foreach (var token in stream.ConfigureAwait(false))
                if (token.Text.Length > 0) await WriteChunkAsync(index, token.Text, role: null, finishReason: null).ConfigureAwait(false);
            var completion = await stream.Completion.ConfigureAwait(false);
            Count(completion);
            await WriteChunkAsync(index, null, role: null, finishReason: FinishReasonText(completion.FinishReason)).ConfigureAwait(false);
            return completion;
        }

        private Task WriteChunkAsync(int index, string? text, string? role, string? finishReason)
        {
            object choice;
            if (kind == Kind.Chat)
            {
                object delta = role is not null ? new { role, content = text } : text is not null ? new { content = text } : new { };
                choice = new { index, delta, logprobs = (object?)null, finish_reason = finishReason };
            }
            else choice = new { text = text ?? "", index, logprobs = (object?)null, finish_reason = finishReason };
            return WriteEventAsync(new { id = _id, @object = ChunkObject, created = _created, model = modelId, choices = new[] { choice } });
        }

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
