namespace Inference.Backends.Cpu;

/// <summary>
/// Q5_K weights × Q8_K activations (ggml's <c>vec_dot_q5_K_q8_K</c>): <see cref="Q4_KKernel"/>'s sums with five-bit codes,
/// the fifth bit of sub-blocks 2k and 2k + 1 being bits 2k and 2k + 1 of the block's qh bytes:
/// y += d_x·(d·Σ_j sc_j·Σ q·q_x − dmin·Σ_j m_j·Σ q_x).
/// </summary>
/// <remarks>
/// Codes ≤ 31, so no <c>vpmaddubsw</c> pair saturates (2 · 31 · 127). The integer sums are exact, so the AVX2 and
/// scalar paths agree to f32 rounding of the per-super-block scaling.
/// </remarks>
internal readonly unsafe struct Q5_KKernel : IQuantKernel
{
    public static void Tile<TTile, TDot>(in MatMulArgs a, byte* row, int r, int b) where TTile : IBatchTile where TDot : IIntegerIsa =>
        Q4_KKernel.Tile<TTile, TDot, Q5_KCodes>(a, row, r, b);
}
