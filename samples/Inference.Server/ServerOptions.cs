using System.Globalization;
using Inference.Chat;

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

    /// <summary>Engine threads (<c>--threads</c>); null for the engine's default.</summary>
    public int? Threads { get; init; }

    /// <summary>Context length (<c>--ctx-size</c>); null for the engine's default.</summary>
    public int? ContextLength { get; init; }

    /// <summary>Most choices one request may ask for with <c>n</c>.</summary>
    public int MaxChoices { get; init; } = 16;

    /// <summary>Reads <c>--model</c>, <c>--urls</c>, <c>--chat-template</c>, <c>--model-id</c>, <c>--threads</c> and <c>--ctx-size</c>.</summary>
    /// <exception cref="ArgumentException">A value is missing or malformed, or <c>--model</c> is absent.</exception>
    public static ServerOptions Parse(IReadOnlyList<string> args)
    {
        var options = new ServerOptions();
        for (int i = 0; i < args.Count; i++)
        {
            string name = args[i];
            string? inline = null;
            int eq = name.IndexOf('=');
            if (name.StartsWith("--", StringComparison.Ordinal) && eq > 0) (name, inline) = (name[..eq], name[(eq + 1)..]);
            string Value() => inline ?? (i + 1 < args.Count ? args[++i] : throw new ArgumentException($"{name} needs a value", nameof(args)));
            int IntValue() => int.TryParse(Value(), NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) && v > 0 ? v : throw new ArgumentException($"{name} needs a positive integer", nameof(args));
            options = name switch
            {
                "--model" or "-m" => options with { ModelPath = Value() },
                "--urls" => options with { Urls = Value() },
                "--chat-template" => options with { ChatTemplate = Inference.Chat.ChatTemplate.Parse(File.ReadAllText(Value())) },
                "--model-id" => options with { ModelId = Value() },
                "--threads" or "-t" => options with { Threads = IntValue() },
                "--ctx-size" or "-c" => options with { ContextLength = IntValue() },
                _ => options,
            };
        }
        if (string.IsNullOrEmpty(options.ModelPath)) throw new ArgumentException("--model PATH is required", nameof(args));
        return options;
    }
}
