using System.Text.Json;
using Inference.Models;
using Inference.Models.Architectures;
using Inference.Tokenization;
using static Inference.Loading.HfCheckpointJson;

namespace Inference.Loading;

/// <summary>
/// A Hugging Face checkpoint folder of a llama or qwen2 model: <c>config.json</c>, one or several <c>*.safetensors</c>
/// shards (with <c>model.safetensors.index.json</c> when sharded), and optionally <c>generation_config.json</c>,
/// <c>tokenizer.json</c> and <c>tokenizer_config.json</c>. The shards are memory-mapped; weights stay in them.
/// </summary>
/// <remarks>
/// <code>
/// using var checkpoint = HfCheckpoint.Open("TinyLlama-1.1B-Chat-v1.0");
/// ModelConfig config = checkpoint.Config;          // RopeLayout.Neox
/// ModelTokenizer tokenizer = checkpoint.CreateTokenizer();
/// </code>
/// The checkpoint must stay open while a model bound to its weights is used.
/// </remarks>
public sealed class HfCheckpoint : IDisposable
{
    /// <summary>The configuration file name.</summary>
    public const string ConfigFileName = "config.json";
    /// <summary>The shard index file name.</summary>
    public const string IndexFileName = "model.safetensors.index.json";
    /// <summary>The single-file checkpoint name.</summary>
    public const string SingleFileName = "model.safetensors";
    /// <summary>The generation configuration file name.</summary>
    public const string GenerationConfigFileName = "generation_config.json";
    /// <summary>The tokenizer file name.</summary>
    public const string TokenizerFileName = "tokenizer.json";
    /// <summary>The tokenizer configuration file name.</summary>
    public const string TokenizerConfigFileName = "tokenizer_config.json";

    private readonly List<SafetensorsFile> _shards;
    private readonly Dictionary<string, (SafetensorsFile File, SafetensorsTensorInfo Tensor)> _tensors;
    private readonly HfCheckpointConfig _config;

    private HfCheckpoint(string directory, HfCheckpointConfig config, List<SafetensorsFile> shards,
        Dictionary<string, (SafetensorsFile, SafetensorsTensorInfo)> tensors, HfTokenizerJsonConfig? tokenizerConfig, int[] eosIds, string? notice)
    {
        Notice = notice;
        DirectoryPath = directory;
        _config = config;
        _shards = shards;
        _tensors = tensors;
        TokenizerConfig = tokenizerConfig;
        EosTokenIds = eosIds;
        Architecture = ModelArchitecture.Find(config.Model.Architecture)!;
        Weights = new HfCheckpointWeightSource(this, Architecture, config.RopeFreqFactors, config.Vectors);
    }

    /// <summary>The checkpoint folder.</summary>
    public string DirectoryPath { get; }

    /// <summary>The model's hyperparameters, from <c>config.json</c>.</summary>
    public ModelConfig Config => _config.Model;

    /// <summary>Vectors the architecture computes from config.json (Phi-3's LongRoPE factors), by GGUF name.</summary>
    internal IReadOnlyDictionary<string, float[]> ComputedVectors => _config.Vectors;

    /// <summary>Whether the output head shares the embedding matrix.</summary>
    public bool TieWordEmbeddings => _config.TieWordEmbeddings;

    /// <summary>The <c>torch_dtype</c> of <c>config.json</c> (for example <c>bfloat16</c>), if given.</summary>
    public string? TorchDType => _config.TorchDType;

    /// <summary>The safetensors shards, in file-name order.</summary>
    public IReadOnlyList<SafetensorsFile> Shards => _shards;

    /// <summary>
    /// Token ids that end generation: <c>generation_config.json</c>'s <c>eos_token_id</c> (one or several), else
    /// <c>config.json</c>'s. The tokenizer's own EOS is added when <see cref="CreateTokenizer"/> knows it.
    /// </summary>
    public IReadOnlyList<int> EosTokenIds { get; }

    /// <summary><c>tokenizer_config.json</c> (chat template, BOS/EOS tokens, add_bos_token), or null when absent.</summary>
    public HfTokenizerJsonConfig? TokenizerConfig { get; }

    /// <summary>The chat template of <c>tokenizer_config.json</c> (a Jinja template), if any.</summary>
    public string? ChatTemplate => TokenizerConfig?.ChatTemplate;

    /// <summary>
    /// What the folder holds that does not run, said once for a log line: for a multimodal checkpoint
    /// (<c>Gemma3ForConditionalGeneration</c>) that only its text model runs and how many vision tensors are ignored;
    /// null for a text checkpoint.
    /// </summary>
    public string? Notice { get; }

    /// <summary>The model's architecture.</summary>
    internal ModelArchitecture Architecture { get; }

    /// <summary>The weights under GGUF names, for binding a model.</summary>
    internal IWeightSource Weights { get; }

    /// <summary>Opens and validates the checkpoint in <paramref name="directory"/>.</summary>
    /// <exception cref="DirectoryNotFoundException">The folder does not exist.</exception>
    /// <exception cref="ModelFormatException">
    /// A file is missing or malformed, the model is not supported, a shard is invalid, or the tensors do not match the configuration.
    /// </exception>
    public static HfCheckpoint Open(string directory)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        if (!Directory.Exists(directory)) throw new DirectoryNotFoundException($"{directory}: folder not found");
        directory = Path.GetFullPath(directory);
        var config = HfCheckpointConfig.Read(Path.Combine(directory, ConfigFileName));
        var tokenizerConfig = HfTokenizerJsonConfig.Read(Path.Combine(directory, TokenizerConfigFileName));

        var shards = new List<SafetensorsFile>();
        try
        {
            var tensors = OpenShards(directory, shards);
            string? notice = null;
            if (config.MultimodalClass is { } multimodal)
            {
                tensors = TextModelTensors(directory, tensors, out int ignored);
                notice = $"{multimodal}: the text model runs; the vision tower and multimodal projector ({ignored} tensors) are ignored";
            }
            var eos = new List<int>();
            string generationPath = Path.Combine(directory, GenerationConfigFileName);
            using (var generation = Load(generationPath, MaxConfigBytes, optional: true))
            {
                if (generation is not null) eos.AddRange(IntOrList(generationPath, generation.RootElement, "eos_token_id", int.MaxValue));
            }
            if (eos.Count == 0) eos.AddRange(config.EosTokenIds);
            var checkpoint = new HfCheckpoint(directory, config, shards, tensors, tokenizerConfig, eos.Distinct().ToArray(), notice);
            checkpoint.ValidateTensors();
            return checkpoint;
        }
        catch
        {
            foreach (var s in shards) s.Dispose();
            throw;
        }
    }

    /// <summary>Finds a tensor by its Hugging Face name (for example <c>model.norm.weight</c>).</summary>
    public SafetensorsTensorInfo? FindTensor(string name) => _tensors.TryGetValue(name, out var t) ? t.Tensor : null;

    /// <summary>The shard holding tensor <paramref name="name"/> and its info, or null.</summary>
    internal (SafetensorsFile File, SafetensorsTensorInfo Tensor)? Locate(string name) => _tensors.TryGetValue(name, out var t) ? t : null;

    /// <summary>
    /// Builds the tokenizer from <c>tokenizer.json</c> and <c>tokenizer_config.json</c>, padded with unused tokens up to the
    /// model's vocabulary size when the embedding has more rows than the tokenizer has tokens.
    /// </summary>
    /// <exception cref="ModelFormatException"><c>tokenizer.json</c> is missing, malformed or of an unsupported kind.</exception>
    public ModelTokenizer CreateTokenizer() =>
        HfTokenizerJson.Load(Path.Combine(DirectoryPath, TokenizerFileName), TokenizerConfig, Config.VocabSize);

    /// <summary>The tokenizer (and chat template) as in-memory GGUF metadata, as the chat prompt encoder reads it.</summary>
    internal GgufFile CreateTokenizerMetadata() =>
        HfTokenizerJson.LoadAsGguf(Path.Combine(DirectoryPath, TokenizerFileName), TokenizerConfig, Config.VocabSize);

    /// <summary>
    /// Writes the checkpoint as a GGUF file the way llama.cpp's converter does (llama Q/K rows permuted for adjacent-pair
    /// RoPE; weights in their stored dtype, norms as F32; tokenizer keys from <c>tokenizer.json</c> when present), so it
    /// loads through the GGUF path of this library and of llama.cpp.
    /// </summary>
    /// <exception cref="ModelFormatException"><c>tokenizer.json</c> is malformed or unsupported.</exception>
    public void ConvertToGguf(string path, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        HfCheckpointGgufConverter.Write(this, path, QkRowOrder.AdjacentPairs, cancellationToken);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var s in _shards) s.Dispose();
    }

    private static Dictionary<string, (SafetensorsFile, SafetensorsTensorInfo)> OpenShards(string directory, List<SafetensorsFile> shards)
    {
        var tensors = new Dictionary<string, (SafetensorsFile, SafetensorsTensorInfo)>(StringComparer.Ordinal);
        string indexPath = Path.Combine(directory, IndexFileName);
        Dictionary<string, string>? weightMap = null;
        var files = new List<string>();
        using (var index = Load(indexPath, MaxConfigBytes, optional: true))
        {
            if (index is not null)
            {
                if (Find(index.RootElement, "weight_map") is not JsonElement map || map.ValueKind != JsonValueKind.Object)
                    throw new ModelFormatException(indexPath, -1, "'weight_map' is missing or not an object");
                weightMap = new Dictionary<string, string>(StringComparer.Ordinal);
                foreach (var entry in map.EnumerateObject())
                {
                    if (entry.Value.ValueKind != JsonValueKind.String)
                        throw new ModelFormatException(indexPath, -1, $"'weight_map.{entry.Name}' is not a file name");
                    string file = entry.Value.GetString()!;
                    // NOTE: the index names files inside the checkpoint; anything that could leave the folder is refused.
                    if (file.Length == 0 || Path.GetFileName(file) != file || file is "." or ".." || !file.EndsWith(".safetensors", StringComparison.Ordinal))
                        throw new ModelFormatException(indexPath, -1, $"'weight_map.{entry.Name}' names '{file}', expected a .safetensors file in the checkpoint folder");
                    if (!weightMap.TryAdd(entry.Name, file)) throw new ModelFormatException(indexPath, -1, $"tensor '{entry.Name}' is listed twice");
                    if (!files.Contains(file)) files.Add(file);
                }
            }
        }
        if (weightMap is null)
        {
            if (File.Exists(Path.Combine(directory, SingleFileName))) files.Add(SingleFileName);
            else
            {
                foreach (var f in Directory.GetFiles(directory, "*.safetensors")) files.Add(Path.GetFileName(f));
                if (files.Count == 0) throw new ModelFormatException(directory, -1, $"no {SingleFileName}, {IndexFileName} or other *.safetensors file");
            }
        }
        files.Sort(StringComparer.Ordinal);

        foreach (string name in files)
        {
            var shard = SafetensorsFile.Open(Path.Combine(directory, name));
            shards.Add(shard);
            foreach (var t in shard.Tensors)
            {
                if (weightMap is not null && weightMap.GetValueOrDefault(t.Name) != name)
                {
                    // A tensor the index places elsewhere (or does not list) is ignored, as transformers does.
                    continue;
                }
                if (!tensors.TryAdd(t.Name, (shard, t)))
                    throw shard.Bad(t.DataOffset, $"tensor '{t.Name}' also appears in '{Path.GetFileName(tensors[t.Name].Item1.FilePath)}'");
            }
        }
        if (weightMap is not null)
        {
            foreach (var (tensor, file) in weightMap)
                if (!tensors.ContainsKey(tensor))
                    throw new ModelFormatException(Path.Combine(directory, file), -1, $"tensor '{tensor}' is listed in {IndexFileName} but not in this file");
        }
        return tensors;
    }

    /// <summary>
    /// The text model's tensors of a multimodal checkpoint under the names of a text checkpoint: transformers saves them
    /// under <c>language_model.model.…</c> (before 4.52) or <c>model.language_model.…</c>, the output head as
    /// <c>language_model.lm_head.weight</c> or <c>lm_head.weight</c>; the rest (vision tower, projector) is counted and left out.
    /// </summary>
    private static Dictionary<string, (SafetensorsFile, SafetensorsTensorInfo)> TextModelTensors(string directory,
        Dictionary<string, (SafetensorsFile, SafetensorsTensorInfo)> tensors, out int ignored)
    {
        const string Prefix = "language_model.";
        var text = new Dictionary<string, (SafetensorsFile, SafetensorsTensorInfo)>(StringComparer.Ordinal);
        ignored = 0;
        foreach (var (name, tensor) in tensors)
        {
            int at = name.IndexOf(Prefix, StringComparison.Ordinal);
            string? textName = at >= 0 ? name.Remove(at, Prefix.Length) : name == "lm_head.weight" ? name : null;
            if (textName is null)
            {
                ignored++;
                continue;
            }
            if (!text.TryAdd(textName, tensor))
                throw new ModelFormatException(directory, -1, $"tensor '{name}' and another one are both the text model's '{textName}'");
        }
        return text;
    }

    /// <summary>Checks that every tensor the model binds exists with the shape the configuration implies.</summary>
    private void ValidateTensors()
    {
        var c = Config;
        var w = Weights;
        var embedding = Locate("model.embed_tokens.weight")?.Tensor
            ?? throw new ModelFormatException(DirectoryPath, -1, "tensor 'model.embed_tokens.weight' is missing");
        if (embedding.Shape.Length != 2 || embedding.Shape[1] != c.Dim || embedding.Shape[0] != c.VocabSize)
            throw new ModelFormatException(DirectoryPath, -1, $"'model.embed_tokens.weight' has shape [{string.Join(", ", embedding.Shape)}], expected [vocab_size {c.VocabSize}, hidden_size {c.Dim}]");
        if (!TieWordEmbeddings && !w.Contains("output.weight"))
            throw new ModelFormatException(DirectoryPath, -1, "'lm_head.weight' is missing and tie_word_embeddings is false");
        // Every tensor the forward pass reads, with its shape.
        foreach (var spec in Architecture.Build(c, w).Weights)
        {
            if (spec.IsExpert) w.GetExpertMatrix(spec.Name, spec.Expert, spec.Experts, spec.Rows, spec.Cols);
            else if (spec.IsMatrix) w.GetMatrix(spec.Name, spec.TensorRows, spec.Cols);
            else w.GetVector(spec.Name, spec.Rows);
        }
    }
}
