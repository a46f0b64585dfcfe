namespace Inference.KvCache;

/// <summary>Whether full KV blocks are hashed and shared between sequences with the same token prefix.</summary>
public enum PrefixCachingMode
{
    /// <summary>Full blocks are hashed; a new sequence reuses the longest cached prefix of full blocks.</summary>
    Enabled,

    /// <summary>No hashing and no sharing (except between forked sequences); every prompt is computed in full.</summary>
    Disabled,
}
