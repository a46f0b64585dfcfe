namespace Inference.Cuda;

/// <summary>
/// Instruction groups that both generated tensor-core modules (<see cref="FlashPrefillPtx"/> and
/// <see cref="TensorCoreGemmPtx"/>) emit: ldmatrix and mma.sync on register fragments, and the swizzled shared-memory
/// offsets of 16-byte chunks.
/// </summary>
/// <remarks>
/// NOTE: each helper writes exactly the lines the generators wrote inline before, so the embedded modules are
/// unchanged byte for byte; a helper that changed an operand's spelling would change every module that uses it.
/// </remarks>
internal static class PtxEmit
{
    /// <summary>Registers <paramref name="name"/><paramref name="first"/> .. + <paramref name="count"/> - 1 as a vector operand: <c>{fa0, fa1, fa2, fa3}</c>.</summary>
    public static string Regs(string name, int first, int count)
    {
        var parts = new string[count];
        for (int i = 0; i < count; i++) parts[i] = name + (first + i).ToString(System.Globalization.CultureInfo.InvariantCulture);
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
}
