using System.CommandLine;
using System.CommandLine.Parsing;
using Inference.Chat;
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

    /// <summary>Most choices one request may ask for with <c>n</c>.</summary>
    public int MaxChoices { get; init; } = 16;

    /// <summary>Reads <c>--urls</c>, <c>--chat-template</c>, <c>--model-id</c> and the engine's options, <c>--model</c> among them.</summary>
    /// <exception cref="ArgumentException">
    /// An option is unknown, a value is missing or malformed, or <c>--model</c> is absent; the message is one line.
    /// </exception>
    public static ServerOptions Parse(IReadOnlyList<string> args)
    {
        ArgumentNullException.ThrowIfNull(args);
        var (root, engine, urls, chatTemplate, modelId) = CreateCommand();
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
            ModelPath = result.GetValue(engine.Model)!,
            Urls = result.GetValue(urls),
            ChatTemplate = result.GetValue(chatTemplate) is { } file ? ChatTemplate.Parse(File.ReadAllText(file.FullName)) : null,
            ModelId = result.GetValue(modelId),
            Engine = engineOptions,
        };
    }

    /// <summary>Whether <paramref name="args"/> asks for the option list (<c>--help</c>, <c>-h</c>, <c>-?</c>).</summary>
    public static bool IsHelp(IReadOnlyList<string> args) =>
        args.Contains("--help") || args.Contains("-h") || args.Contains("-?");

    /// <summary>Writes the option list to <paramref name="writer"/>.</summary>
    public static void WriteHelp(TextWriter writer)
    {
        var (root, _, _, _, _) = CreateCommand();
        root.Parse(["--help"]).Invoke(new InvocationConfiguration { Output = writer });
    }

    private static (RootCommand Root, EngineCommandLine Engine, Option<string?> Urls, Option<FileInfo?> ChatTemplate, Option<string?> ModelId) CreateCommand()
    {
        var engine = new EngineCommandLine();
        engine.Model.Required = true;
        var urls = new Option<string?>("--urls") { Description = "Where to listen, e.g. http://127.0.0.1:8080" };
        var chatTemplate = new Option<FileInfo?>("--chat-template") { Description = "A Jinja chat template file to use instead of the model's" };
        var modelId = new Option<string?>("--model-id") { Description = "The model id /v1/models reports (default: the model's name)" };
        var root = new RootCommand("Inference: an OpenAI-compatible server") { urls, chatTemplate, modelId };
        engine.AddTo(root);
        return (root, engine, urls, chatTemplate, modelId);
    }
}
