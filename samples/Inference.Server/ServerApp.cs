using Inference.Cluster.Routing;
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
        if (options.ClusterGatewayPorts is { } ports) return BuildClusterFront(options, ports);
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
        return Build(options, args, services =>
        {
            services.AddSingleton(engine);
            services.AddSingleton<ITextGenerator>(engine);
        });
    }

    /// <summary>Builds the app over any <see cref="ITextGenerator"/> (a model of an engine cluster, for example), which the caller owns.</summary>
    public static WebApplication Build(ITextGenerator generator, ServerOptions options, string[]? args = null)
    {
        ArgumentNullException.ThrowIfNull(generator);
        return Build(options, args, services => services.AddSingleton(generator));
    }

    /// <summary>
    /// Builds the app in front of an engine cluster (<c>--cluster PORTS</c>): an Orleans client of the localhost cluster
    /// whose gateways listen on <paramref name="gatewayPorts"/>, and a router that sends each request to a replica of
    /// <see cref="ServerOptions.ModelId"/> by prefix affinity (<c>--routing</c>).
    /// </summary>
    public static WebApplication BuildClusterFront(ServerOptions options, int[] gatewayPorts, string[]? args = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(gatewayPorts);
        string model = options.ModelId ?? throw new ArgumentException("--cluster needs --model-id (the model the replicas host)", nameof(options));
        return Build(options, args, services =>
        {
            services.AddSingleton(sp => new ClusterRouter(sp.GetRequiredService<IClusterClient>(), new ClusterRouterOptions { Policy = options.Routing }));
            services.AddSingleton(sp => sp.GetRequiredService<ClusterRouter>().ForModel(model));
        }, builder => builder.UseOrleansClient(client => client.UseLocalhostClustering(gatewayPorts, options.ClusterId, options.ClusterId)));
    }

    private static WebApplication Build(ServerOptions options, string[]? args, Action<IServiceCollection> register, Action<WebApplicationBuilder>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        var builder = WebApplication.CreateSlimBuilder(args ?? []);
        if (options.Urls is not null) builder.WebHost.UseUrls(options.Urls);
        configure?.Invoke(builder);
        register(builder.Services);
        builder.Services.AddSingleton(options);
        builder.Services.AddSingleton<ServerMetrics>();
        if (options.AllowedOrigins.Count > 0) builder.Services.AddCors();
        builder.Services.AddOpenTelemetry().WithMetrics(metrics => metrics
            .AddMeter(ServerMetrics.EngineMeterName, ServerMetrics.MeterName, RouterMetrics.MeterName)
            .AddPrometheusExporter());

        var app = builder.Build();
        // CORS is off unless origins were named: browsers then refuse cross-origin calls.
        if (options.AllowedOrigins.Count > 0)
        {
            app.UseCors(policy =>
            {
                if (options.AllowedOrigins.Contains("*")) policy.AllowAnyOrigin();
                else policy.WithOrigins([.. options.AllowedOrigins]);
                policy.AllowAnyHeader().AllowAnyMethod();
            });
        }
        if (options.ApiKey is { } key) app.Use(ApiKeyCheck.Create(key));
        app.MapPrometheusScrapingEndpoint("/metrics");
        app.MapGet("/health", () => Results.Json(new { status = "ok" }));
        app.MapGet("/v1/models", (HttpContext context) => OpenAiEndpoints.Models(context, context.RequestServices.GetRequiredService<ITextGenerator>(), options));
        app.MapPost("/v1/completions", (HttpContext context) => OpenAiEndpoints.HandleAsync(context, OpenAiEndpoints.Kind.Completion));
        app.MapPost("/v1/chat/completions", (HttpContext context) => OpenAiEndpoints.HandleAsync(context, OpenAiEndpoints.Kind.Chat));
        // Anything else under /v1 gets OpenAI's error shape rather than an empty 404.
        app.Map("/v1/{**rest}", (HttpContext context) =>
            new OpenAiError(404, $"no route for {context.Request.Method} {context.Request.Path}", code: "unknown_url").WriteAsync(context));
        return app;
    }
}
