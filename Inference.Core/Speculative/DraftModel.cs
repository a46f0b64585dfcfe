using Inference.Loading;
using Inference.Models;
using Inference.Tokenization;

namespace Inference.Speculative;

/// <summary>A loaded draft model: its weights (and the file they are mapped from), checked against the target's vocabulary.</summary>
internal sealed class DraftModel : IDisposable
{
    private readonly LoadedModel _files;

    private DraftModel(LoadedModel files, LlamaModel model)
    {
        _files = files;
        Model = model;
    }

    public LlamaModel Model { get; }

    /// <summary>
    /// Loads <paramref name="path"/> (a .gguf file or a Hugging Face checkpoint folder) as the engine loads its model
    /// (<see cref="LoadedModel.Open"/>), for the engine's context window, and checks that its vocabulary is the target's.
    /// </summary>
    /// <exception cref="FileNotFoundException">No such file or folder.</exception>
    /// <exception cref="DraftModelMismatchException">The vocabularies differ.</exception>
    /// <exception cref="ModelFormatException">The file is malformed or of an unsupported model.</exception>
    public static DraftModel Load(string path, int contextLength, ModelConfig targetConfig, ModelTokenizer targetTokenizer)
    {
        var files = LoadedModel.Open(path, contextLength);
        try
        {
            Check(path, files.Config, files.Tokenizer, targetConfig, targetTokenizer);
            return new DraftModel(files, new LlamaModel(files.Weights, files.Config));
        }
        catch
        {
            files.Dispose();
            throw;
        }
    }

    private static void Check(string path, ModelConfig config, ModelTokenizer tokenizer, ModelConfig targetConfig, ModelTokenizer targetTokenizer)
    {
        if (config.VocabSize != targetConfig.VocabSize || tokenizer.VocabularySize != targetTokenizer.VocabularySize)
            throw new DraftModelMismatchException($"the draft model {path} has a vocabulary of {tokenizer.VocabularySize} tokens ({config.VocabSize} logits), the model {targetTokenizer.VocabularySize} ({targetConfig.VocabSize}); a draft model needs the same vocabulary");
        for (int t = 0; t < tokenizer.VocabularySize; t++)
            if (!tokenizer.GetTokenBytes(t).SequenceEqual(targetTokenizer.GetTokenBytes(t)))
                throw new DraftModelMismatchException($"token {t} of the draft model {path} differs from the model's; a draft model needs the same vocabulary");
    }

    public void Dispose() => _files.Dispose();
}
