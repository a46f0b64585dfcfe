namespace Inference.Kernels.Reference;

/// <summary>Plain matrix multiply in GGML row layout and the Q8_0 block format.</summary>
public static class ReferenceMatMul
{
    /// <summary><c>y[b, r] = Σ_c W[r, c] * x[b, c]</c> with f32 weights (dequantize others first).</summary>
    /// <param name="weights">Weights, <c>[rows, cols]</c>.</param>
    /// <param name="x">Input, <c>[batch, cols]</c>.</param>
    /// <param name="y">Output, <c>[batch, rows]</c>.</param>
    /// <param name="rows">Output features.</param>
    /// <param name="cols">Input features.</param>
    public static void MatMul(ReadOnlySpan<float> weights, ReadOnlySpan<float> x, Span<float> y, int rows, int cols)
    {
        for (int b = 0; b < x.Length / cols; b++)
            for (int r = 0; r < rows; r++)
            {
                double sum = 0;
                for (int c = 0; c < cols; c++) sum += (double)weights[r * cols + c] * x[b * cols + c];
                y[b * rows + r] = (float)sum;
            }
    }

    /// <summary>Quantizes f32 values to Q8_0 blocks (scale = max|x| / 127, q = round(x / scale)), as GGML does.</summary>
    /// <param name="values">Values, a multiple of 32.</param>
    /// <returns>The Q8_0 bytes: per block an f16 scale then 32 int8.</returns>
    /// <exception cref="ArgumentException">The length is not a multiple of 32.</exception>
    public static byte[] QuantizeQ8_0(ReadOnlySpan<float> values)
    {
        if (values.Length % 32 != 0) throw new ArgumentException("length must be a multiple of 32.", nameof(values));
        var bytes = new byte[values.Length / 32 * 34];
        for (int b = 0; b < values.Length / 32; b++)
        {
            var block = values.Slice(b * 32, 32);
            float amax = 0f;
            foreach (var v in block) amax = MathF.Max(amax, MathF.Abs(v));
            float d = amax / 127f;
            float id = d != 0f ? 1f / d : 0f;
            BitConverter.TryWriteBytes(bytes.AsSpan(b * 34, 2), (Half)d);
            for (int i = 0; i < 32; i++) bytes[b * 34 + 2 + i] = (byte)(sbyte)MathF.Round(block[i] * id);
        }
        return bytes;
    }

    /// <summary>Expands Q8_0 blocks to f32: <c>x = scale * q</c>.</summary>
    /// <param name="bytes">Q8_0 bytes.</param>
    /// <returns>The values.</returns>
    public static float[] DequantizeQ8_0(ReadOnlySpan<byte> bytes)
    {
        var values = new float[bytes.Length / 34 * 32];
        for (int b = 0; b < bytes.Length / 34; b++)
        {
            float d = (float)BitConverter.ToHalf(bytes.Slice(b * 34, 2));
            for (int i = 0; i < 32; i++) values[b * 32 + i] = d * (sbyte)bytes[b * 34 + 2 + i];
        }
        return values;
    }
}
