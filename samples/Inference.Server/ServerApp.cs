using Inference.Engine;
using OpenTelemetry.Metrics;

namespace Inference.Server;

/// <summary>Builds the OpenAI-compatible HTTP server: <c>/v1/models</c>, <c>/v1/completions</c>, <c>/v1/chat/completions</c>, <c>/health</c>, <c>/metrics</c>.</summary>
public static class ServerApp
{
    /// <summary>Parses the command line, loads the model and builds the app; the engine is disposed when the app stops.</summary>
    /// <exception cref="ArgumentException">The command line is invalid.</exception>
    public static async Task<WebApplication> BuildAsync(string[] args, CancellationToken cancellationToken = default)
    {
        var options = ServerOptions.Parse(args);
        var engine = await InferenceEngine.LoadAsync(options.ModelPath, options.Engine, progress: null, cancellationToken).ConfigureAwait(false);
        // NOTE: the command line is ours alone (unknown options are errors), so none of it goes to ASP.NET Core's configuration.
        var app = Build(engine, options);
        app.Lifetime.ApplicationStopped.Register(() => engine.DisposeAsync().AsTask().GetAwaiter().GetResult());
        return app;
    }

    /// <summary>Builds the app over an engine the caller owns (it stays running after the app stops).</summary>
    /// <param name="engine">The engine that answers requests.</param>
    /// <param name="options">Server settings (<see cref="ServerOptions.ModelPath"/> is not used here).</param>
    /// <param name="args">Extra ASP.NET Core configuration arguments (for example <c>--urls</c>); may be null.</param>
    public static WebApplication Build(InferenceEngine engine, ServerOptions options, string[]? args = null)
    {
        ArgumentNullException.ThrowIfNull(engine);
        ArgumentNullException.ThrowIfNull(options);
        var builder = WebApplication.CreateSlimBuilder(args ?? []);
        if (options.Urls is not null) builder.WebHost.UseUrls(options.Urls);
        builder.Services.AddSingleton(engine);
        builder.Services.AddSingleton(options);
        builder.Services.AddSingleton<ServerMetrics>();
        builder.Services.AddOpenTelemetry().WithMetrics(metrics => metrics
            .AddMeter(ServerMetrics.EngineMeterName, ServerMetrics.MeterName)
            .AddPrometheusExporter());

        var app = builder.Build();
        app.MapPrometheusScrapingEndpoint("/metrics");
        app.MapGet("/health", () => Results.Json(new { status = "ok" }));
        app.MapGet("/v1/models", (HttpContext context) => OpenAiEndpoints.Models(context, engine, options));
        app.MapPost("/v1/completions", (HttpContext context) => OpenAiEndpoints.HandleAsync(context, OpenAiEndpoints.Kind.Completion));
        app.MapPost("/v1/chat/completions", (HttpContext context) => OpenAiEndpoints.HandleAsync(context, OpenAiEndpoints.Kind.Chat));
        // Anything else under /v1 gets OpenAI's error shape rather than an empty 404.
        app.Map("/v1/{**rest}", (HttpContext context) =>
            new OpenAiError(404, $"no route for {context.Request.Method} {context.Request.Path}", code: "unknown_url").WriteAsync(context));
        return app;
    }
}
