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

    /// <summary>Where to listen (<c>--urls</c>), for example <c>http://127.0.0.1:8080</c>; null leaves it to ASP.NET Core's configuration.</summary>
    public string? Urls { get; init; }

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
    /// <exception cref="ArgumentException">
    /// An option is unknown, a value is missing or malformed, or <c>--model</c> is absent; the message is one line.
    /// </exception>
    public static ServerOptions Parse(IReadOnlyList<string> args)
    {
        ArgumentNullException.ThrowIfNull(args);
        var (root, engine, urls, chatTemplate, modelId, cluster) = CreateCommand();
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
        return new ServerOptions
        {
            ModelPath = result.GetValue(engine.Model) ?? "",
            Urls = result.GetValue(urls),
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

    /// <summary>Whether <paramref name="args"/> asks for the option list (<c>--help</c>, <c>-h</c>, <c>-?</c>).</summary>
    public static bool IsHelp(IReadOnlyList<string> args) =>
        args.Contains("--help") || args.Contains("-h") || args.Contains("-?");

    /// <summary>Writes the option list to <paramref name="writer"/>.</summary>
    public static void WriteHelp(TextWriter writer)
    {
        var (root, _, _, _, _, _) = CreateCommand();
        root.Parse(["--help"]).Invoke(new InvocationConfiguration { Output = writer });
    }

    private static (RootCommand Root, EngineCommandLine Engine, Option<string?> Urls, Option<FileInfo?> ChatTemplate, Option<string?> ModelId, ClusterOptions Cluster) CreateCommand()
    {
        var engine = new EngineCommandLine();
        // NOTE: --model is required unless --cluster is given (checked in Parse).
        var urls = new Option<string?>("--urls") { Description = "Where to listen, e.g. http://127.0.0.1:8080" };
        var chatTemplate = new Option<FileInfo?>("--chat-template") { Description = "A Jinja chat template file to use instead of the model's" };
        var modelId = new Option<string?>("--model-id") { Description = "The model id /v1/models reports (default: the model's name)" };
        var cluster = new ClusterOptions(
            new Option<string?>("--cluster") { Description = "Front a localhost engine cluster instead of loading a model: its gateway ports, e.g. 30000,30001 (docs/cluster.md)" },
            new Option<string?>("--cluster-id") { Description = "The cluster's id and service id (default: inference)" },
            new Option<string?>("--routing") { Description = "How the cluster router picks a replica: affinity (default), least-loaded or round-robin" });
        var root = new RootCommand("Inference: an OpenAI-compatible server") { urls, chatTemplate, modelId, cluster.Ports, cluster.Id, cluster.Routing };
        engine.AddTo(root);
        return (root, engine, urls, chatTemplate, modelId, cluster);
    }
}
