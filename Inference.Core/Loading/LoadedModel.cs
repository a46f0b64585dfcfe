using Inference.Models;
using Inference.Tokenization;

namespace Inference.Loading;

/// <summary>
/// A model opened for inference from a GGUF file or a Hugging Face checkpoint folder: its configuration for the context
/// window it runs with, its tokenizer, its stored weights and its extra end-of-generation ids. The engine's model and a
/// speculative draft model both open through <see cref="Open"/>, so both are checked and configured alike.
/// </summary>
/// <remarks>The weights stay in the mapped file(s) until <see cref="Dispose"/>.</remarks>
internal sealed class LoadedModel : IDisposable
{
    private readonly IDisposable _file;          // the GgufFile or HfCheckpoint the weights live in
    private readonly HfCheckpoint? _checkpoint;
    private GgufFile? _metadata;

    private LoadedModel(IDisposable file, HfCheckpoint? checkpoint, GgufFile? metadata, string name, ModelConfig config, ModelTokenizer tokenizer, IWeightSource weights, IReadOnlyList<int> extraStopTokens, string? notice = null)
    {
        Notice = notice;
        _file = file;
        _checkpoint = checkpoint;
        _metadata = metadata;
        Name = name;
        Config = config;
        Tokenizer = tokenizer;
        Weights = weights;
        ExtraStopTokens = extraStopTokens;
    }

    /// <summary>The model's name: GGUF's <c>general.name</c>, else the file's or folder's name.</summary>
    public string Name { get; }

    /// <summary>What the model file holds that does not run (a multimodal checkpoint's vision tower), for one log line; else null.</summary>
    public string? Notice { get; }

    /// <summary>The hyperparameters, for the context window given to <see cref="Open"/> (<see cref="ModelConfig.ForContextWindow"/>).</summary>
    public ModelConfig Config { get; }

    /// <summary>The tokenizer.</summary>
    public ModelTokenizer Tokenizer { get; }

    /// <summary>The stored weights (GGUF tensor names).</summary>
    public IWeightSource Weights { get; }

    /// <summary>End-of-generation ids beyond the tokenizer's own (a checkpoint's <c>generation_config.json</c>); empty for GGUF.</summary>
    public IReadOnlyList<int> ExtraStopTokens { get; }

    /// <summary>
    /// Tokenizer and chat template metadata as GGUF keys: the model file itself, or for a checkpoint built from
    /// <c>tokenizer.json</c> on first use.
    /// </summary>
    /// <exception cref="ModelFormatException"><c>tokenizer.json</c> is malformed or unsupported.</exception>
    public GgufFile Metadata => _metadata ??= _checkpoint!.CreateTokenizerMetadata();

    /// <summary>The context window an engine runs a model of <paramref name="config"/> with when none is asked for.</summary>
    public static int DefaultContextWindow(ModelConfig config) => Math.Min(config.ContextLength, 4096);

    /// <summary>Opens <paramref name="path"/>: a .gguf file, or a folder with <c>config.json</c>, safetensors and <c>tokenizer.json</c>.</summary>
    /// <param name="path">The model.</param>
    /// <param name="contextLength">The context window it runs with (LongRoPE picks its factors by it); null for <see cref="DefaultContextWindow"/>.</param>
    /// <param name="progress">Receives 0, 0.2 and 0.5 as loading goes on (the caller reports the rest).</param>
    /// <param name="cancellationToken">Cancels loading.</param>
    /// <exception cref="FileNotFoundException">No such file or folder.</exception>
    /// <exception cref="ModelFormatException">The file is malformed, of an unsupported model, or the folder has no <c>config.json</c>.</exception>
    public static LoadedModel Open(string path, int? contextLength, IProgress<float>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        progress?.Report(0f);
        return Directory.Exists(path) ? OpenCheckpoint(path, contextLength, progress, cancellationToken) : OpenGguf(path, contextLength, progress, cancellationToken);
    }

    private static LoadedModel OpenGguf(string path, int? contextLength, IProgress<float>? progress, CancellationToken cancellationToken)
    {
        var gguf = GgufFile.Open(path);
        try
        {
            cancellationToken.ThrowIfCancellationRequested();
            progress?.Report(0.2f);
            var config = ModelConfig.FromGguf(gguf);
            config = config.ForContextWindow(contextLength ?? DefaultContextWindow(config));
            var tokenizer = ModelTokenizer.FromGguf(gguf);
            if (tokenizer.VocabularySize > config.VocabSize)
                throw gguf.Bad(-1, $"the tokenizer has {tokenizer.VocabularySize} tokens but the embedding only {config.VocabSize} rows");
            cancellationToken.ThrowIfCancellationRequested();
            progress?.Report(0.5f);
            string name = gguf.GetString("general.name") is { Length: > 0 } n ? n : Path.GetFileNameWithoutExtension(path);
            // NOTE: a multimodal model's GGUF may hold its vision tower (v.*) and projector (mm.*) beside the text model.
            int vision = 0;
            foreach (var t in gguf.Tensors)
                if (t.Name.StartsWith("v.", StringComparison.Ordinal) || t.Name.StartsWith("mm.", StringComparison.Ordinal)) vision++;
            string? notice = vision == 0 ? null : $"{config.Architecture}: the text model runs; the vision tower and multimodal projector ({vision} tensors) are ignored";
            return new LoadedModel(gguf, null, gguf, name, config, tokenizer, new GgufWeightSource(gguf), [], notice);
        }
        catch
        {
            gguf.Dispose();
            throw;
        }
    }

    private static LoadedModel OpenCheckpoint(string path, int? contextLength, IProgress<float>? progress, CancellationToken cancellationToken)
    {
        if (!File.Exists(Path.Combine(path, HfCheckpoint.ConfigFileName)))
            throw new ModelFormatException(path, -1, "is a directory without config.json: expected a GGUF file or a Hugging Face checkpoint folder");
        var checkpoint = HfCheckpoint.Open(path);
        try
        {
            cancellationToken.ThrowIfCancellationRequested();
            progress?.Report(0.2f);
            var tokenizer = checkpoint.CreateTokenizer();
            progress?.Report(0.5f);
            var config = checkpoint.Config.ForContextWindow(contextLength ?? DefaultContextWindow(checkpoint.Config));
            string name = Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(path)));
            return new LoadedModel(checkpoint, checkpoint, null, name, config, tokenizer, checkpoint.Weights, checkpoint.EosTokenIds, checkpoint.Notice);
        }
        catch
        {
            checkpoint.Dispose();
            throw;
        }
    }

    /// <summary>Closes the file(s) the weights are mapped from and the built metadata.</summary>
    public void Dispose()
    {
        if (_metadata is not null && !ReferenceEquals(_metadata, _file)) _metadata.Dispose();
        _file.Dispose();
    }
}
