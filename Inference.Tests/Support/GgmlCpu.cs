using System.Runtime.InteropServices;

namespace Inference.Tests.Support;

/// <summary>
/// ggml's CPU backend called directly (the libraries LLamaSharp ships and <see cref="LlamaCpp"/> loads): one
/// <c>ggml_mul_mat</c> on plain CPU buffers, so weights go through <c>vec_dot</c> / llamafile tiles, never a repack.
/// </summary>
/// <remarks>
/// NOTE: binds the C API of the ggml version inside LLamaSharp 0.30.0 (<c>ggml_init_params</c> is
/// <c>{ size_t mem_size; void* mem_buffer; bool no_alloc; }</c>); revisit when that package changes.
/// </remarks>
public static unsafe class GgmlCpu
{
    [StructLayout(LayoutKind.Sequential)]
    private struct InitParams
    {
        public nuint MemSize;
        public nint MemBuffer;
        public byte NoAlloc;
    }

    private static readonly Lock Gate = new();
    private static (nint Base, nint Cpu) _libraries;

    /// <summary>
    /// y[b, r] = Σ_c W[r, c]·x[b, c] computed by ggml: <paramref name="weights"/> holds <paramref name="rows"/> rows of
    /// <paramref name="cols"/> values as <paramref name="ggmlType"/> (the GGML type code), x is [batch, cols].
    /// </summary>
    public static float[] MatMul(int ggmlType, ReadOnlySpan<byte> weights, int rows, int cols, ReadOnlySpan<float> x, int batch, int threads = 2)
    {
        LlamaCpp.EnsureInitialized();
        lock (Gate)
        {
            var (bl, cl) = Libraries();
            var init = (delegate* unmanaged<InitParams, nint>)NativeLibrary.GetExport(bl, "ggml_init");
            var newTensor = (delegate* unmanaged<nint, int, long, long, nint>)NativeLibrary.GetExport(bl, "ggml_new_tensor_2d");
            var mulMat = (delegate* unmanaged<nint, nint, nint, nint>)NativeLibrary.GetExport(bl, "ggml_mul_mat");
            var newGraph = (delegate* unmanaged<nint, nint>)NativeLibrary.GetExport(bl, "ggml_new_graph");
            var expand = (delegate* unmanaged<nint, nint, void>)NativeLibrary.GetExport(bl, "ggml_build_forward_expand");
            var data = (delegate* unmanaged<nint, nint>)NativeLibrary.GetExport(bl, "ggml_get_data");
            var free = (delegate* unmanaged<nint, void>)NativeLibrary.GetExport(bl, "ggml_free");
            var compute = (delegate* unmanaged<nint, nint, int, int>)NativeLibrary.GetExport(cl, "ggml_graph_compute_with_ctx");
            ((delegate* unmanaged<void>)NativeLibrary.GetExport(cl, "ggml_cpu_init"))();

            long bytes = (long)weights.Length + 4L * cols * batch + 4L * rows * batch + (16 << 20);
            var ctx = init(new InitParams { MemSize = (nuint)bytes });
            if (ctx == 0) throw new InvalidOperationException("ggml_init failed");
            try
            {
                var a = newTensor(ctx, ggmlType, cols, rows);
                var b = newTensor(ctx, 0, cols, batch); // GGML_TYPE_F32
                weights.CopyTo(new Span<byte>((void*)data(a), weights.Length));
                x[..(batch * cols)].CopyTo(new Span<float>((void*)data(b), batch * cols));
                var c = mulMat(ctx, a, b);
                var graph = newGraph(ctx);
                expand(graph, c);
                int status = compute(ctx, graph, threads);
                if (status != 0) throw new InvalidOperationException($"ggml_graph_compute_with_ctx returned {status}");
                return new Span<float>((void*)data(c), batch * rows).ToArray();
            }
            finally
            {
                free(ctx);
            }
        }
    }

    /// <summary>
    /// ggml's own dequantization (<c>dequantize_row_*</c> in libggml-base) of <paramref name="count"/> values of
    /// <paramref name="typeName"/> (ggml's lower-case type name: q4_1, q2_K, iq4_xs…).
    /// </summary>
    public static float[] Dequantize(string typeName, ReadOnlySpan<byte> blocks, int count)
    {
        LlamaCpp.EnsureInitialized();
        lock (Gate)
        {
            var (bl, _) = Libraries();
            var dequantize = (delegate* unmanaged<byte*, float*, long, void>)NativeLibrary.GetExport(bl, "dequantize_row_" + typeName);
            var y = new float[count];
            fixed (byte* px = blocks)
            fixed (float* py = y)
                dequantize(px, py, count);
            return y;
        }
    }

    /// <summary>
    /// <paramref name="rows"/> rows of <paramref name="cols"/> values quantized by ggml's <c>ggml_quantize_chunk</c> to
    /// <paramref name="ggmlType"/> (the GGML type code) without an importance matrix: what <c>llama-quantize</c> calls.
    /// </summary>
    public static byte[] QuantizeChunk(int ggmlType, ReadOnlySpan<float> src, int rows, int cols)
    {
        LlamaCpp.EnsureInitialized();
        lock (Gate)
        {
            var (bl, _) = Libraries();
            var rowSize = (delegate* unmanaged<int, long, nuint>)NativeLibrary.GetExport(bl, "ggml_row_size");
            var quantize = (delegate* unmanaged<int, float*, void*, long, long, long, float*, nuint>)NativeLibrary.GetExport(bl, "ggml_quantize_chunk");
            var dst = new byte[(long)rowSize(ggmlType, cols) * rows];
            fixed (float* s = src)
            fixed (byte* d = dst)
            {
                nuint written = quantize(ggmlType, s, d, 0, rows, cols, null);
                if ((long)written != dst.Length) throw new InvalidOperationException($"ggml_quantize_chunk wrote {written} bytes, expected {dst.Length}");
            }
            return dst;
        }
    }

    /// <summary>The ggml libraries llama.cpp's loader chose for this CPU (found among the loaded modules).</summary>
    private static (nint, nint) Libraries()
    {
        if (_libraries.Base != 0) return _libraries;
        string? dir = null;
        foreach (var line in File.ReadLines("/proc/self/maps"))
        {
            int slash = line.IndexOf('/');
            if (slash >= 0 && line.EndsWith("/libggml-cpu.so", StringComparison.Ordinal))
            {
                dir = Path.GetDirectoryName(line[slash..]);
                break;
            }
        }
        if (dir is null) throw new InvalidOperationException("libggml-cpu.so is not loaded");
        _libraries = (NativeLibrary.Load(Path.Combine(dir, "libggml-base.so")), NativeLibrary.Load(Path.Combine(dir, "libggml-cpu.so")));
        return _libraries;
    }
}
