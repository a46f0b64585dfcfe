using System.Globalization;
using System.Numerics;

namespace Inference.Cuda;

/// <summary>
/// Instruction groups that both generated tensor-core modules (<see cref="FlashPrefillPtx"/> and
/// <see cref="TensorCoreGemmPtx"/>) emit: ldmatrix and mma.sync on register fragments, the swizzled shared-memory
/// offsets of 16-byte chunks, and the head of the cp.async pipeline loop that feeds them.
/// </summary>
/// <remarks>
/// NOTE: each helper writes exactly the lines the generators wrote inline before, so the embedded modules are
/// unchanged byte for byte; a helper that changed an operand's spelling would change every module that uses it. The one
/// choice a helper makes is <see cref="StageOf"/>'s mask for a power-of-two stage count (the flash module's two stages;
/// the embedded GEMM tile has three, so it keeps rem).
/// </remarks>
internal static class PtxEmit
{
    /// <summary>Registers <paramref name="name"/><paramref name="first"/> .. + <paramref name="count"/> - 1 as a vector operand: <c>{fa0, fa1, fa2, fa3}</c>.</summary>
    public static string Regs(string name, int first, int count)
    {
        var parts = new string[count];
        for (int i = 0; i < count; i++) parts[i] = name + (first + i).ToString(CultureInfo.InvariantCulture);
        return "{" + string.Join(", ", parts) + "}";
    }

    /// <summary>
    /// ldmatrix.x4 of four 8x8 b16 matrices at shared address <paramref name="address"/> into registers
    /// <paramref name="name"/><paramref name="first"/> .. + 3 (<paramref name="trans"/>: transposed, for a row-major B operand).
    /// </summary>
    public static void LdMatrixX4(this PtxWriter w, string name, int first, string address, bool trans = false) =>
        w.Line(trans ? "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16" : "ldmatrix.sync.aligned.m8n8.x4.shared.b16",
            $"{Regs(name, first, 4)}, [{address}]");

    /// <summary>
    /// One mma.sync m16n8k16 with f32 accumulation in place: <paramref name="acc"/><paramref name="accFirst"/> .. + 3 +=
    /// A (<paramref name="a"/><paramref name="aFirst"/> .. + 3) · B (<paramref name="b"/><paramref name="bFirst"/>, + 1),
    /// A and B of element <paramref name="type"/> (f16 or bf16).
    /// </summary>
    public static void MmaM16N8K16(this PtxWriter w, string type, string acc, int accFirst, string a, int aFirst, string b, int bFirst)
    {
        string d = Regs(acc, accFirst, 4);
        w.Line($"mma.sync.aligned.m16n8k16.row.col.f32.{type}.{type}.f32", $"{d}, {Regs(a, aFirst, 4)}, {Regs(b, bFirst, 2)}, {d}");
    }

    /// <summary>
    /// <paramref name="dst"/> = <paramref name="row"/> · <paramref name="rowBytes"/> + (<paramref name="chunk"/> ^
    /// <paramref name="swizzle"/>) · 16: the shared byte offset of a 16-byte chunk in a swizzled tile.
    /// </summary>
    public static void SwizzledOffset(this PtxWriter w, string dst, string row, int rowBytes, string chunk, string swizzle, string? comment = null)
    {
        w.Line("xor.b32", $"{dst}, {chunk}, {swizzle}");
        w.Line("shl.b32", $"{dst}, {dst}, 4");
        w.Line("mad.lo.u32", $"{dst}, {row}, {rowBytes}, {dst}", comment);
    }

    /// <summary>
    /// <paramref name="dst"/> = ((<paramref name="chunk"/> + <paramref name="add"/>) ^ <paramref name="swizzle"/>) · 16:
    /// the byte offset within its swizzled shared row of chunk <paramref name="chunk"/> + <paramref name="add"/>.
    /// </summary>
    public static void SwizzledChunkBytes(this PtxWriter w, string dst, string chunk, int add, string swizzle)
    {
        w.Line("add.u32", $"{dst}, {chunk}, {add}");
        w.Line("xor.b32", $"{dst}, {dst}, {swizzle}");
        w.Line("shl.b32", $"{dst}, {dst}, 4");
    }

    /// <summary>
    /// Head of a cp.async pipeline's main loop over tiles kt = 0 .. <paramref name="count"/> - 1 through
    /// <paramref name="stages"/> shared stages of <paramref name="stageBytes"/> bytes from sbase, tile kt in stage
    /// kt % stages: leaves for EPILOGUE after the last tile; waits for this thread's copies of tile kt (the stages - 2
    /// later groups may stay in flight), then for the whole CTA; sets <paramref name="next"/> = kt + stages - 1 and,
    /// unless that is past the end, runs <paramref name="loadNext"/> (the copies of that tile, no commit); commits a group
    /// either way, so that the wait count holds to the end; and leaves tile kt's stage address in cbase. Uses kt, pdone,
    /// tmp and the labels EPILOGUE and NO_LOAD.
    /// </summary>
    public static void PipelineLoopHead(this PtxWriter w, string loop, string count, int stages, int stageBytes, string next, Action loadNext)
    {
        w.Line("mov.u32", "kt, 0");
        w.Label(loop);
        w.Line("setp.ge.u32", $"pdone, kt, {count}");
        w.Line("@pdone bra", "EPILOGUE");
        w.Line("cp.async.wait_group", (stages - 2).ToString(CultureInfo.InvariantCulture), "this thread's copies of tile kt landed");
        w.Line("bar.sync", "0", "everyone's landed; everyone is done with the stage refilled next");
        w.Line("add.u32", $"{next}, kt, {stages - 1}");
        w.Line("setp.ge.u32", $"pdone, {next}, {count}");
        w.Line("@pdone bra", "NO_LOAD");
        loadNext();
        w.Label("NO_LOAD");
        w.Line("cp.async.commit_group", null);
        w.StageOf("tmp", "kt", stages);
        w.Line("mad.lo.u32", $"cbase, tmp, {stageBytes}, sbase");
    }

    /// <summary>End of the loop <see cref="PipelineLoopHead"/> began: on to tile kt + 1.</summary>
    public static void PipelineLoopEnd(this PtxWriter w, string loop)
    {
        w.Line("add.u32", "kt, kt, 1");
        w.Line("bra", loop);
    }

    /// <summary><paramref name="dst"/> = <paramref name="tile"/> % <paramref name="stages"/>, a mask where the stage count is a power of two.</summary>
    public static void StageOf(this PtxWriter w, string dst, string tile, int stages)
    {
        if (BitOperations.IsPow2(stages)) w.Line("and.b32", $"{dst}, {tile}, {stages - 1}");
        else w.Line("rem.u32", $"{dst}, {tile}, {stages}");
    }
}
