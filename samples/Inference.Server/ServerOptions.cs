using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using Inference.Chat;
using Inference.Cluster.Routing;
using Inference.CommandLine;
using Inference.Engine;

namespace Inference.Server;

/// <summary>Settings of the OpenAI-compatible server. Immutable; <see cref="Parse"/> reads them from the command line.</summary>
public sealed record ServerOptions
{
    /// <summary>The GGUF model to serve (<c>--model</c>).</summary>
    public string ModelPath { get; init; } = "";

    /// <summary>
    /// Where to listen (<c>--urls</c>, or <c>--host</c> and <c>--port</c>), for example <c>http://127.0.0.1:8080</c>.
    /// Default: <see cref="DefaultUrls"/>, the loopback interface only; serving other machines is asked for explicitly
    /// (<c>--host 0.0.0.0</c>). Null leaves it to ASP.NET Core's configuration.
    /// </summary>
    public string? Urls { get; init; } = DefaultUrls;

    /// <summary>Where the server listens unless told otherwise: <c>http://127.0.0.1:8000</c> (vLLM's port, loopback only).</summary>
    public const string DefaultUrls = "http://127.0.0.1:8000";

    /// <summary>
    /// The key every <c>/v1</c> request must present as <c>Authorization: Bearer KEY</c> (<c>--api-key</c>, else the
    /// <c>INFERENCE_API_KEY</c> environment variable); null serves without a key. <c>/health</c> and <c>/metrics</c>
    /// stay open.
    /// </summary>
    public string? ApiKey { get; init => field = value is null || value.Length > 0 ? value : throw new ArgumentException("ApiKey must not be empty; use null for no key", nameof(ApiKey)); }

    /// <summary>The environment variable the API key is read from when <c>--api-key</c> is not given.</summary>
    public const string ApiKeyEnvironmentVariable = "INFERENCE_API_KEY";

    /// <summary>
    /// Origins whose browser pages may call the server (<c>--allowed-origins</c>, vLLM's name; <c>*</c> for any). Empty
    /// (the default): no CORS headers are sent, so browsers refuse cross-origin calls.
    /// </summary>
    public IReadOnlyList<string> AllowedOrigins { get; init => field = value ?? throw new ArgumentNullException(nameof(AllowedOrigins)); } = [];

    /// <summary>Largest request body accepted, in bytes; a larger one is answered 413. Default 8 MiB.</summary>
    public long MaxRequestBodyBytes { get; init => field = value >= 1024 ? value : throw new ArgumentOutOfRangeException(nameof(MaxRequestBodyBytes), value, "MaxRequestBodyBytes must be at least 1024."); } = 8 << 20;

    /// <summary>Most prompts one completions request may give as an array of strings.</summary>
    public int MaxPrompts { get; init => field = value >= 1 ? value : throw new ArgumentOutOfRangeException(nameof(MaxPrompts), value, "MaxPrompts must be at least 1."); } = 32;

    /// <summary>The chat template to use instead of the model's (<c>--chat-template FILE</c>).</summary>
    public ChatTemplate? ChatTemplate { get; init; }

    /// <summary>The model id reported by <c>/v1/models</c> and in responses (<c>--model-id</c>); null uses the GGUF name.</summary>
    public string? ModelId { get; init; }

    /// <summary>
    /// The engine's options (<c>--threads</c>, <c>--max-model-len</c>, <c>--kv-cache-dtype</c>, ...: see
    /// <see cref="EngineCommandLine"/>, which the CLI shares).
    /// </summary>
    public EngineOptions Engine { get; init => field = value ?? throw new ArgumentNullException(nameof(Engine)); } = new();

    /// <summary>
    /// Front an engine cluster instead of loading a model (<c>--cluster 30000,30001</c>): the gateway ports of a localhost
    /// Orleans cluster whose silos host replicas of <see cref="ModelId"/>; null serves <see cref="ModelPath"/> locally.
    /// </summary>
    public int[]? ClusterGatewayPorts { get; init; }

    /// <summary>The cluster's id and service id (<c>--cluster-id</c>). Default <c>inference</c>.</summary>
    public string ClusterId { get; init; } = "inference";

    /// <summary>How the cluster router picks a replica (<c>--routing affinity|least-loaded|round-robin</c>).</summary>
    public RoutingPolicy Routing { get; init; } = RoutingPolicy.PrefixAffinity;

    /// <summary>Most choices one request may ask for with <c>n</c>.</summary>
    public int MaxChoices { get; init; } = 16;

    /// <summary>Reads <c>--urls</c>, <c>--chat-template</c>, <c>--model-id</c>, <c>--cluster</c>, <c>--cluster-id</c>, <c>--routing</c> and the engine's options, <c>--model</c> among them.</summary>
    /// <remarks>Also <c>--host</c>, <c>--port</c>, <c>--api-key</c> (else <c>INFERENCE_API_KEY</c>) and <c>--allowed-origins</c>.</remarks>
    /// <param name="args">The command line.</param>
    /// <param name="environment">Reads an environment variable (the API key's); null reads the process's.</param>
    /// <exception cref="ArgumentException">
    /// An option is unknown, a value is missing or malformed, or <c>--model</c> is absent; the message is one line.
    /// </exception>
    public static ServerOptions Parse(IReadOnlyList<string> args, Func<string, string?>? environment = null)
    {
        ArgumentNullException.ThrowIfNull(args);
        environment ??= Environment.GetEnvironmentVariable;
        var (root, engine, urls, chatTemplate, modelId, cluster, access) = CreateCommand();
        var result = root.Parse([.. args]);
        if (result.Errors.Count > 0)
        {
            // The most specific error first: an unknown word says more than a missing option.
            ParseError error = result.Errors[0];
            foreach (var e in result.Errors)
            {
                if (e.Message.Contains("Unrecognized", StringComparison.Ordinal)) { error = e; break; }
            }
            throw new ArgumentException(error.Message.ReplaceLineEndings(" ").Trim());
        }
        var ports = result.GetValue(cluster.Ports) is { } p ? ParsePorts(p) : null;
        if (ports is not null && result.GetValue(modelId) is null) throw new ArgumentException("--cluster needs --model-id (the model the replicas host)");
        if (ports is null && result.GetValue(engine.Model) is null) throw new ArgumentException("Option '--model' is required (or --cluster PORTS --model-id ID).");
        var routing = result.GetValue(cluster.Routing) switch
        {
            null or "affinity" => RoutingPolicy.PrefixAffinity,
            "least-loaded" => RoutingPolicy.LeastLoaded,
            "round-robin" => RoutingPolicy.RoundRobin,
            var v => throw new ArgumentException($"--routing must be affinity, least-loaded or round-robin, not '{v}'"),
        };
        EngineOptions engineOptions;
        try
        {
            engineOptions = engine.ToEngineOptions(result);
        }
        catch (ArgumentException e)
        {
            throw new ArgumentException(e.Message.ReplaceLineEndings(" ").Trim(), e);
        }
        string host = result.GetValue(access.Host) ?? "127.0.0.1";
        int port = result.GetValue(access.Port) ?? 8000;
        if (port is < 0 or > 65535) throw new ArgumentException($"--port {port} is not a TCP port (0 to 65535)");
        if (host.Contains(':', StringComparison.Ordinal) && !host.StartsWith('[')) host = "[" + host + "]";
        string? key = result.GetValue(access.ApiKey) is { Length: > 0 } k ? k
            : environment(ApiKeyEnvironmentVariable) is { Length: > 0 } fromEnvironment ? fromEnvironment : null;
        var origins = new List<string>();
        foreach (var value in result.GetValue(access.AllowedOrigins) ?? [])
            foreach (var origin in value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)) origins.Add(origin);
        return new ServerOptions
        {
            ModelPath = result.GetValue(engine.Model) ?? "",
            Urls = result.GetValue(urls) ?? $"http://{host}:{port}",
            ApiKey = key,
            AllowedOrigins = origins,
            ChatTemplate = result.GetValue(chatTemplate) is { } file ? ChatTemplate.Parse(File.ReadAllText(file.FullName)) : null,
            ModelId = result.GetValue(modelId),
            Engine = engineOptions,
            ClusterGatewayPorts = ports,
            ClusterId = result.GetValue(cluster.Id) ?? "inference",
            Routing = routing,
        };
    }

    private static int[] ParsePorts(string value)
    {
        var parts = value.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        var ports = new int[parts.Length];
        for (int i = 0; i < parts.Length; i++)
            if (!int.TryParse(parts[i], NumberStyles.Integer, CultureInfo.InvariantCulture, out ports[i]) || ports[i] is < 1 or > 65535)
                throw new ArgumentException($"--cluster needs comma-separated gateway ports (1-65535), not '{value}'");
        return ports.Length > 0 ? ports : throw new ArgumentException("--cluster needs at least one gateway port");
    }

    private sealed record ClusterOptions(Option<string?> Ports, Option<string?> Id, Option<string?> Routing);

    private sealed record AccessOptions(Option<string?> Host, Option<int?> Port, Option<string?> ApiKey, Option<string[]?> AllowedOrigins);

    /// <summary>Whether <paramref name="args"/> asks for the option list (<c>--help</c>, <c>-h</c>, <c>-?</c>).</summary>
    public static bool IsHelp(IReadOnlyList<string> args) =>
        args.Contains("--help") || args.Contains("-h") || args.Contains("-?");

    /// <summary>Writes the option list to <paramref name="writer"/>.</summary>
    public static void WriteHelp(TextWriter writer)
    {
        var (root, _, _, _, _, _, _) = CreateCommand();
        root.Parse(["--help"]).Invoke(new InvocationConfiguration { Output = writer });
    }

    private static (RootCommand Root, EngineCommandLine Engine, Option<string?> Urls, Option<FileInfo?> ChatTemplate, Option<string?> ModelId, ClusterOptions Cluster, AccessOptions Access) CreateCommand()
    {
        var engine = new EngineCommandLine();
        // NOTE: --model is required unless --cluster is given (checked in Parse).
        var urls = new Option<string?>("--urls") { Description = "Where to listen, e.g. http://127.0.0.1:8080 (overrides --host and --port)" };
        var access = new AccessOptions(
            new Option<string?>("--host") { Description = "The interface to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for every interface)" },
            new Option<int?>("--port") { Description = "The TCP port to listen on (default 8000)" },
            new Option<string?>("--api-key") { Description = $"The key /v1 requests must send as 'Authorization: Bearer KEY' (default: ${ApiKeyEnvironmentVariable}, else none)" },
            new Option<string[]?>("--allowed-origins") { Description = "Origins browsers may call the server from, comma-separated or repeated ('*' for any; default: none, CORS off)", AllowMultipleArgumentsPerToken = true });
        var chatTemplate = new Option<FileInfo?>("--chat-template") { Description = "A Jinja chat template file to use instead of the model's" };
        var modelId = new Option<string?>("--model-id") { Description = "The model id /v1/models reports (default: the model's name)" };
        var cluster = new ClusterOptions(
            new Option<string?>("--cluster") { Description = "Front a localhost engine cluster instead of loading a model: its gateway ports, e.g. 30000,30001 (docs/cluster.md)" },
            new Option<string?>("--cluster-id") { Description = "The cluster's id and service id (default: inference)" },
            new Option<string?>("--routing") { Description = "How the cluster router picks a replica: affinity (default), least-loaded or round-robin" });
        var root = new RootCommand("Inference: an OpenAI-compatible server") { urls, access.Host, access.Port, access.ApiKey, access.AllowedOrigins, chatTemplate, modelId, cluster.Ports, cluster.Id, cluster.Routing };
        engine.AddTo(root);
        return (root, engine, urls, chatTemplate, modelId, cluster, access);
    }
}
