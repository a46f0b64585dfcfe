using System.ClientModel;
using Inference.Chat;
using Inference.Engine;
using Inference.Server;
using Microsoft.AspNetCore.Builder;
using OpenAI;
using OpenAI.Chat;

namespace Inference.Tests.Support;

/// <summary>
/// The OpenAI-compatible server, in process on a free loopback port (logging warnings only), with an
/// <see cref="HttpClient"/> and OpenAI SDK clients for it. Disposing stops the server; the engine or generator it
/// serves stays the caller's.
/// </summary>
internal sealed class TestServer : IAsyncDisposable
{
    /// <summary>Every message's content after BOS: one user message renders exactly as the plain prompt.</summary>
    public const string PlainTemplateSource = "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}";

    private static readonly string[] Args = ["--Logging:LogLevel:Default=Warning"];

    private TestServer(WebApplication app)
    {
        App = app;
        BaseUrl = app.Urls.Single();
        Http = new HttpClient { BaseAddress = new Uri(BaseUrl) };
    }

    /// <summary><see cref="PlainTemplateSource"/>, parsed.</summary>
    public static ChatTemplate PlainTemplate => ChatTemplate.Parse(PlainTemplateSource);

    /// <summary>The running server.</summary>
    public WebApplication App { get; }

    /// <summary>Where it listens, <c>http://127.0.0.1:PORT</c>.</summary>
    public string BaseUrl { get; }

    /// <summary>A client whose base address is <see cref="BaseUrl"/>.</summary>
    public HttpClient Http { get; }

    /// <summary>Starts the server over <paramref name="engine"/> (the options' URLs are replaced by a free loopback port).</summary>
    public static Task<TestServer> StartAsync(InferenceEngine engine, ServerOptions options, CancellationToken cancellationToken = default) =>
        StartAsync(ServerApp.Build(engine, options with { Urls = "http://127.0.0.1:0" }, Args), cancellationToken);

    /// <summary>Starts the server over <paramref name="generator"/> (the options' URLs are replaced by a free loopback port).</summary>
    public static Task<TestServer> StartAsync(ITextGenerator generator, ServerOptions options, CancellationToken cancellationToken = default) =>
        StartAsync(ServerApp.Build(generator, options with { Urls = "http://127.0.0.1:0" }, Args), cancellationToken);

    private static async Task<TestServer> StartAsync(WebApplication app, CancellationToken cancellationToken)
    {
        try
        {
            await app.StartAsync(cancellationToken);
        }
        catch
        {
            await app.DisposeAsync();
            throw;
        }
        return new TestServer(app);
    }

    /// <summary>An OpenAI SDK client for the server's <c>/v1</c> routes.</summary>
    public OpenAIClient OpenAiClient(string apiKey = "not-needed") =>
        new(new ApiKeyCredential(apiKey), new OpenAIClientOptions { Endpoint = new Uri(BaseUrl + "/v1") });

    /// <summary>An OpenAI SDK chat client for <paramref name="model"/>.</summary>
    public ChatClient Chat(string model, string apiKey = "not-needed") => OpenAiClient(apiKey).GetChatClient(model);

    /// <summary>Stops the server.</summary>
    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        await App.StopAsync(CancellationToken.None);
        await App.DisposeAsync();
    }
}
