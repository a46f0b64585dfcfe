namespace Inference.KvCache;

/// <summary>
/// A copy the KV storage must perform before the next forward pass: copy-on-write gave a sequence a private
/// <see cref="DestinationBlockId"/> in place of the shared, partly filled <see cref="SourceBlockId"/>.
/// </summary>
/// <param name="SourceBlockId">Physical block whose filled slots are copied (all layers, keys and values).</param>
/// <param name="DestinationBlockId">Freshly allocated physical block that receives them.</param>
public readonly record struct BlockCopy(int SourceBlockId, int DestinationBlockId);
