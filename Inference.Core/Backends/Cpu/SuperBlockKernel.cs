using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Inference.Backends.Cpu;

/// <summary>
/// Super-blocks of 256 weights with small integer sub-block scales × Q8_K activations, as ggml's
/// <c>vec_dot_q2_K_q8_K</c>, <c>vec_dot_q3_K_q8_K</c> and <c>vec_dot_iq4_xs_q8_K</c>: per super-block
/// y += d_x·(d·Σ_j sc_j·Σ v·q_x − dmin·Σ_j m_j·Σ q_x), v the integer values of sub-block j.
/// </summary>
/// <remarks>
/// <para>Each super-block is decoded once into eight 32-value chunks of codes and the scales of their values as shorts
/// (<see cref="ISuperBlockCodes.Decode"/>), then every batch row of the tile takes <c>vpmaddubsw</c> of the codes with its
/// quants and <c>vpmaddwd</c> of those pair sums with the scales. Q3_K's codes are q + 4h (0..7) and its −4 offset
/// comes back as −4·Σ_j sc_j·bsums_j, in the integer sum; Q2_K's mins as dmin·Σ_j m_j·bsums_j, in float, as ggml does;
/// IQ4_XS's table values are signed: their magnitudes go in unsigned and their signs move onto the quants.</para>
/// <para>All integer sums are exact (codes ≤ 7, or |v| ≤ 127 against |q| ≤ 127: no pair saturates), so the results
/// agree with ggml to f32 roundoff in the per-super-block scaling.</para>
/// </remarks>
internal static unsafe class SuperBlockKernel
{
    public static void Tile<TTile, TDot, TCodes>(in MatMulArgs a, byte* row, int r, int b)
        where TTile : IBatchTile where TDot : IIntegerIsa where TCodes : ISuperBlockCodes
    {
        int nsb = a.Cols / 256, batch = a.Batch;
        // Super-block s of batch row b + t: quants at q + s·qStep + 256t, scale at d[s·batch + t], sums at bsums + s·bsStep + 16t.
        sbyte* q = a.Q + 256L * b;
        float* dx = a.D + b;
        short* bsums = a.BSums + 16L * b;
        long qStep = 256L * batch, bsStep = 16L * batch;
        if (a.Path == KernelPath.Scalar)
        {
            QuantKernel.Store<TTile>(a, r, b,
                DotScalar<TCodes>(row, nsb, q, qStep, dx, batch),
                TTile.Count > 1 ? DotScalar<TCodes>(row, nsb, q + 256, qStep, dx + 1, batch) : 0,
                TTile.Count > 2 ? DotScalar<TCodes>(row, nsb, q + 512, qStep, dx + 2, batch) : 0,
                TTile.Count > 3 ? DotScalar<TCodes>(row, nsb, q + 768, qStep, dx + 3, batch) : 0);
            return;
        }

        var chunks = stackalloc Vector256<byte>[16]; // codes of chunks 0..7, then their scales as shorts
        Vector256<float> acc0 = default, acc1 = default, acc2 = default, acc3 = default;
        Vector256<float> min0 = default, min1 = default, min2 = default, min3 = default;
        for (int s = 0; s < nsb; s++)
        {
            byte* p = row + s * TCodes.BlockBytes;
            sbyte* qs = q + s * qStep;
            float* ds = dx + (long)s * batch;
            short* bs = bsums + s * bsStep;
            TCodes.Decode(p, chunks, out float d, out float dmin, out var bsumFactors);
            Vector256<int> i0 = default, i1 = default, i2 = default, i3 = default;
            for (int c = 0; c < 8; c++)
            {
                var codes = chunks[c];
                var scales = chunks[8 + c].AsInt16();
                sbyte* x = qs + 32 * c;
                i0 = ChunkStep<TCodes>(i0, codes, x, scales);
                if (TTile.Count > 1) i1 = ChunkStep<TCodes>(i1, codes, x + 256, scales);
                if (TTile.Count > 2) i2 = ChunkStep<TCodes>(i2, codes, x + 512, scales);
                if (TTile.Count > 3) i3 = ChunkStep<TCodes>(i3, codes, x + 768, scales);
            }
            if (TCodes.Bsums == SuperBlockBsums.Offset)
            {
                // Q3_K: Σ_j (4·sc_j)·bsums_j, the −4 of the codes whose high bit is clear, in the integer sum.
                i0 -= Avx2.MultiplyAddAdjacent(Vector256.Load(bs), bsumFactors);
                if (TTile.Count > 1) i1 -= Avx2.MultiplyAddAdjacent(Vector256.Load(bs + 16), bsumFactors);
                if (TTile.Count > 2) i2 -= Avx2.MultiplyAddAdjacent(Vector256.Load(bs + 32), bsumFactors);
                if (TTile.Count > 3) i3 -= Avx2.MultiplyAddAdjacent(Vector256.Load(bs + 48), bsumFactors);
            }
            else if (TCodes.Bsums == SuperBlockBsums.Mins)
            {
                min0 = MinStep(min0, bs, bsumFactors, dmin * ds[0]);
                if (TTile.Count > 1) min1 = MinStep(min1, bs + 16, bsumFactors, dmin * ds[1]);
                if (TTile.Count > 2) min2 = MinStep(min2, bs + 32, bsumFactors, dmin * ds[2]);
                if (TTile.Count > 3) min3 = MinStep(min3, bs + 48, bsumFactors, dmin * ds[3]);
            }
            acc0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i0), Vector256.Create(d * ds[0]), acc0);
            if (TTile.Count > 1) acc1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i1), Vector256.Create(d * ds[1]), acc1);
            if (TTile.Count > 2) acc2 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i2), Vector256.Create(d * ds[2]), acc2);
            if (TTile.Count > 3) acc3 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(i3), Vector256.Create(d * ds[3]), acc3);
        }
        QuantKernel.Store<TTile>(a, r, b, Vector256.Sum(acc0 - min0), Vector256.Sum(acc1 - min1), Vector256.Sum(acc2 - min2), Vector256.Sum(acc3 - min3));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> ChunkStep<TCodes>(Vector256<int> acc, Vector256<byte> codes, sbyte* x, Vector256<short> scales)
        where TCodes : ISuperBlockCodes
    {
        var xs = Vector256.Load(x);
        var pairs = TCodes.Signed
            ? Avx2.MultiplyAddAdjacent(Avx2.Abs(codes.AsSByte()), Avx2.Sign(xs, codes.AsSByte()))
            : Avx2.MultiplyAddAdjacent(codes, xs);
        return acc + Avx2.MultiplyAddAdjacent(pairs, scales);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> MinStep(Vector256<float> acc, short* bsums, Vector256<short> mins, float scale) =>
        Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.MultiplyAddAdjacent(Vector256.Load(bsums), mins)), Vector256.Create(scale), acc);

    /// <summary>The plain sums from <see cref="ISuperBlockCodes.Element"/> (the bsums unused).</summary>
    private static float DotScalar<TCodes>(byte* row, int nsb, sbyte* x, long xStep, float* dx, int dStep) where TCodes : ISuperBlockCodes
    {
        float sum = 0;
        for (int s = 0; s < nsb; s++)
        {
            var block = new ReadOnlySpan<byte>(row + s * TCodes.BlockBytes, TCodes.BlockBytes);
            sbyte* xs = x + s * xStep;
            int sumi = 0, sumMins = 0;
            for (int i = 0; i < 256; i++)
            {
                int v = TCodes.Element(block, i, out int scale, out int min);
                sumi += scale * v * xs[i];
                sumMins += min * xs[i];
            }
            TCodes.Scales(block, out float d, out float dmin);
            sum += dx[(long)s * dStep] * (d * sumi - dmin * sumMins);
        }
        return sum;
    }

    /// <summary>
    /// Byte shuffles that broadcast, in a vector holding the same eight short scales in both 128-bit lanes, scale 2j to
    /// the low lane and scale 2j + 1 to the high lane (chunk j of a half super-block: sub-blocks 2j and 2j + 1).
    /// </summary>
    internal static readonly Vector256<byte>[] PairPicks = BuildPairPicks();

    private static Vector256<byte>[] BuildPairPicks()
    {
        var picks = new Vector256<byte>[4];
        var bytes = new byte[32];
        for (int j = 0; j < 4; j++)
        {
            for (int k = 0; k < 16; k += 2)
            {
                bytes[k] = (byte)(4 * j);
                bytes[k + 1] = (byte)(4 * j + 1);
                bytes[16 + k] = (byte)(4 * j + 2);
                bytes[16 + k + 1] = (byte)(4 * j + 3);
            }
            picks[j] = Vector256.Create(bytes);
        }
        return picks;
    }

    /// <summary>
    /// The scales of chunks 0..7 of a super-block with 16 sub-blocks of 16 (Q2_K, Q3_K) into
    /// <paramref name="scales"/>: chunk 4n + j takes sub-blocks 8n + 2j (its first 16 values) and 8n + 2j + 1.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void SixteenScales(Vector256<short> all, Vector256<byte>* scales)
    {
        var picks = PairPicks;
        var low = Vector256.Create(all.GetLower(), all.GetLower()).AsByte();
        var high = Vector256.Create(all.GetUpper(), all.GetUpper()).AsByte();
        for (int j = 0; j < 4; j++)
        {
            scales[j] = Avx2.Shuffle(low, picks[j]);
            scales[4 + j] = Avx2.Shuffle(high, picks[j]);
        }
    }

    /// <summary>The 2-bit codes of the 256 values of a Q2_K / Q3_K super-block whose qs start at <paramref name="qs"/>:
    /// chunk 4n + j is bits 2j, 2j + 1 of qs[32n … 32n + 31].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void TwoBitCodes(byte* qs, Vector256<byte>* codes)
    {
        var three = Vector256.Create((byte)3);
        for (int n = 0; n < 2; n++)
        {
            var v = Vector256.Load(qs + 32 * n).AsUInt16();
            codes[4 * n] = v.AsByte() & three;
            codes[4 * n + 1] = Avx2.ShiftRightLogical(v, 2).AsByte() & three;
            codes[4 * n + 2] = Avx2.ShiftRightLogical(v, 4).AsByte() & three;
            codes[4 * n + 3] = Avx2.ShiftRightLogical(v, 6).AsByte() & three;
        }
    }
}

/// <summary>What a <see cref="ISuperBlockCodes"/> type does with the Q8_K bsums.</summary>
internal enum SuperBlockBsums
{
    /// <summary>Nothing (IQ4_XS).</summary>
    None,
    /// <summary>Subtracts Σ_j f_j·bsums_j from the integer sum (Q3_K's code offset).</summary>
    Offset,
    /// <summary>Subtracts dmin·Σ_j m_j·bsums_j in float (Q2_K's mins).</summary>
    Mins,
}

/// <summary>The layout of a 256-value super-block for <see cref="SuperBlockKernel"/>.</summary>
internal unsafe interface ISuperBlockCodes
{
    /// <summary>Bytes per super-block.</summary>
    static abstract int BlockBytes { get; }

    /// <summary>True when the chunks hold signed values rather than unsigned codes (IQ4_XS).</summary>
    static abstract bool Signed { get; }

    /// <summary>What the bsums are used for.</summary>
    static abstract SuperBlockBsums Bsums { get; }

    /// <summary>
    /// Writes the codes of the eight 32-value chunks to chunks[0..7] and the scales of their values as 16 shorts to
    /// chunks[8..15]; returns d, dmin and the 16 per-sub-block bsum factors as shorts (see <see cref="Bsums"/>).
    /// </summary>
    static abstract void Decode(byte* p, Vector256<byte>* chunks, out float d, out float dmin, out Vector256<short> bsumFactors);

    /// <summary>The scalar reference: the integer value of element i, offset included, its sub-block's scale and min.</summary>
    static abstract int Element(ReadOnlySpan<byte> block, int i, out int scale, out int min);

    /// <summary>The float super-block scale and min scale (0 when there is none).</summary>
    static abstract void Scales(ReadOnlySpan<byte> block, out float d, out float dmin);
}

/// <summary>Q2_K: scales[16] | qs[64] | f16 d | f16 dmin; codes 0..3, scale the low nibble, min the high nibble.</summary>
internal readonly unsafe struct Q2_KCodes : ISuperBlockCodes
{
    public static int BlockBytes => 84;
    public static bool Signed => false;
    public static SuperBlockBsums Bsums => SuperBlockBsums.Mins;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Decode(byte* p, Vector256<byte>* chunks, out float d, out float dmin, out Vector256<short> bsumFactors)
    {
        var packed = Vector128.Load(p);
        var low4 = Vector128.Create((byte)0x0F);
        SuperBlockKernel.SixteenScales(Avx2.ConvertToVector256Int16(packed & low4), chunks + 8);
        bsumFactors = Avx2.ConvertToVector256Int16(Sse2.ShiftRightLogical(packed.AsUInt16(), 4).AsByte() & low4);
        SuperBlockKernel.TwoBitCodes(p + 16, chunks);
        d = Fp16.ToFloat(*(ushort*)(p + 80));
        dmin = Fp16.ToFloat(*(ushort*)(p + 82));
    }

    public static int Element(ReadOnlySpan<byte> block, int i, out int scale, out int min)
    {
        scale = block[i / 16] & 0xF;
        min = block[i / 16] >> 4;
        return Dequantize.K2Code(block.Slice(16, 64), i / 128, i % 128 / 32, i % 32);
    }

    public static void Scales(ReadOnlySpan<byte> block, out float d, out float dmin)
    {
        d = Fp16.ToFloat(BinaryPrimitives.ReadUInt16LittleEndian(block[80..]));
        dmin = Fp16.ToFloat(BinaryPrimitives.ReadUInt16LittleEndian(block[82..]));
    }
}

/// <summary>Q3_K: hmask[32] | qs[64] | scales[12] | f16 d; codes q + 4h (0..7) stand for q + 4h − 4, scales sc − 32.</summary>
internal readonly unsafe struct Q3_KCodes : ISuperBlockCodes
{
    public static int BlockBytes => 110;
    public static bool Signed => false;
    public static SuperBlockBsums Bsums => SuperBlockBsums.Offset;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Decode(byte* p, Vector256<byte>* chunks, out float d, out float dmin, out Vector256<short> bsumFactors)
    {
        // The 16 six-bit scales (Dequantize.Q3_KScale) with 32-bit masks: four bytes of scales per word.
        const uint Low4 = 0x0F0F0F0F, Low2 = 0x03030303;
        uint u0 = *(uint*)(p + 96), u1 = *(uint*)(p + 100), u2 = *(uint*)(p + 104);
        uint a0 = (u0 & Low4) | ((u2 & Low2) << 4);
        uint a1 = (u1 & Low4) | (((u2 >> 2) & Low2) << 4);
        uint a2 = ((u0 >> 4) & Low4) | (((u2 >> 4) & Low2) << 4);
        uint a3 = ((u1 >> 4) & Low4) | (((u2 >> 6) & Low2) << 4);
        var packed = Vector128.Create(a0, a1, a2, a3).AsByte() - Vector128.Create((byte)32);
        var scales = Avx2.ConvertToVector256Int16(packed.AsSByte());
        SuperBlockKernel.SixteenScales(scales, chunks + 8);
        bsumFactors = Avx2.ShiftLeftLogical(scales, 2);
        SuperBlockKernel.TwoBitCodes(p + 32, chunks);
        // The high bit of chunk k (0..7) is bit k of hmask[0..31], moved to bit 2.
        var hm = Vector256.Load(p).AsUInt16();
        var one = Vector256.Create((ushort)0x0101);
        for (int k = 0; k < 8; k++)
        {
            chunks[k] |= Avx2.ShiftLeftLogical(hm & one, 2).AsByte();
            hm = Avx2.ShiftRightLogical(hm, 1);
        }
        d = Fp16.ToFloat(*(ushort*)(p + 108));
        dmin = 0;
    }

    public static int Element(ReadOnlySpan<byte> block, int i, out int scale, out int min)
    {
        scale = Dequantize.Q3_KScale(block.Slice(96, 12), i / 16) - 32;
        min = 0;
        int n = i / 128, j = i % 128 / 32, l = i % 32;
        int high = (block[l] >> (4 * n + j)) & 1;
        return Dequantize.K2Code(block.Slice(32, 64), n, j, l) - (high != 0 ? 0 : 4);
    }

    public static void Scales(ReadOnlySpan<byte> block, out float d, out float dmin)
    {
        d = Fp16.ToFloat(BinaryPrimitives.ReadUInt16LittleEndian(block[108..]));
        dmin = 0;
    }
}

/// <summary>IQ4_XS: f16 d | u16 scales_h | scales_l[4] | qs[128]; table values, scales ls − 32 per 32 values.</summary>
internal readonly unsafe struct IQ4_XSCodes : ISuperBlockCodes
{
    public static int BlockBytes => 136;
    public static bool Signed => true;
    public static SuperBlockBsums Bsums => SuperBlockBsums.None;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Decode(byte* p, Vector256<byte>* chunks, out float d, out float dmin, out Vector256<short> bsumFactors)
    {
        var table = IQ4Table.Both;
        uint high = *(ushort*)(p + 2), low = *(uint*)(p + 4);
        for (int c = 0; c < 8; c++)
        {
            chunks[c] = Avx2.Shuffle(table, Block32Kernel.Nibbles(p + 8 + 16 * c));
            int ls = (int)(((low >> (4 * c)) & 0xF) | (((high >> (2 * c)) & 3) << 4));
            chunks[8 + c] = Vector256.Create((short)(ls - 32)).AsByte();
        }
        d = Fp16.ToFloat(*(ushort*)p);
        dmin = 0;
        bsumFactors = default;
    }

    public static int Element(ReadOnlySpan<byte> block, int i, out int scale, out int min)
    {
        scale = Dequantize.IQ4_XSScale(block, i / 32) - 32;
        min = 0;
        int l = i % 32;
        byte q = block[8 + 16 * (i / 32) + l % 16];
        return Dequantize.IQ4Values[l < 16 ? q & 0xF : q >> 4];
    }

    public static void Scales(ReadOnlySpan<byte> block, out float d, out float dmin)
    {
        d = Fp16.ToFloat(BinaryPrimitives.ReadUInt16LittleEndian(block));
        dmin = 0;
    }
}

/// <summary>Q2_K × Q8_K (<see cref="SuperBlockKernel"/>).</summary>
internal readonly unsafe struct Q2_KKernel : IQuantKernel
{
    public static void Tile<TTile, TDot>(in MatMulArgs a, byte* row, int r, int b) where TTile : IBatchTile where TDot : IIntegerIsa =>
        SuperBlockKernel.Tile<TTile, TDot, Q2_KCodes>(a, row, r, b);
}

/// <summary>Q3_K × Q8_K (<see cref="SuperBlockKernel"/>).</summary>
internal readonly unsafe struct Q3_KKernel : IQuantKernel
{
    public static void Tile<TTile, TDot>(in MatMulArgs a, byte* row, int r, int b) where TTile : IBatchTile where TDot : IIntegerIsa =>
        SuperBlockKernel.Tile<TTile, TDot, Q3_KCodes>(a, row, r, b);
}

/// <summary>IQ4_XS × Q8_K (<see cref="SuperBlockKernel"/>).</summary>
internal readonly unsafe struct IQ4_XSKernel : IQuantKernel
{
    public static void Tile<TTile, TDot>(in MatMulArgs a, byte* row, int r, int b) where TTile : IBatchTile where TDot : IIntegerIsa =>
        SuperBlockKernel.Tile<TTile, TDot, IQ4_XSCodes>(a, row, r, b);
}
