namespace Inference.Constraints;

/// <summary>
/// Splits ranges of Unicode code points into sequences of UTF-8 byte ranges: every code point in [lo, hi] is encoded by
/// exactly one of the sequences, and each sequence is a product of byte ranges (one per byte position).
/// </summary>
/// <remarks>
/// The usual construction (as in RE2 and Go's regexp): a range that crosses an encoding-length boundary is split there;
/// a same-length range is split until, for every byte position, the bytes between the ends' bytes are all used.
/// Surrogates (U+D800–U+DFFF) have no UTF-8 form and are left out.
/// </remarks>
internal static class Utf8Ranges
{
    /// <summary>One byte position of a sequence: bytes in [Lo, Hi].</summary>
    internal readonly record struct ByteRange(byte Lo, byte Hi);

    /// <summary>The sequences covering the code points in <paramref name="ranges"/> (inclusive, any order).</summary>
    public static List<ByteRange[]> Sequences(IEnumerable<(int Lo, int Hi)> ranges)
    {
        var result = new List<ByteRange[]>();
        foreach (var (lo, hi) in ranges)
        {
            if (hi < 0xD800 || lo > 0xDFFF) Split(lo, hi, result);
            else
            {
                if (lo < 0xD800) Split(lo, 0xD7FF, result);
                if (hi > 0xDFFF) Split(0xE000, hi, result);
            }
        }
        return result;
    }

    private static void Split(int lo, int hi, List<ByteRange[]> result)
    {
        if (lo > hi) return;
        // Encoding-length boundaries.
        ReadOnlySpan<int> maxOfLength = [0x7F, 0x7FF, 0xFFFF, 0x10FFFF];
        for (int i = 0; i < 3; i++)
        {
            if (lo <= maxOfLength[i] && hi > maxOfLength[i])
            {
                Split(lo, maxOfLength[i], result);
                Split(maxOfLength[i] + 1, hi, result);
                return;
            }
        }
        if (hi <= 0x7F)
        {
            result.Add([new((byte)lo, (byte)hi)]);
            return;
        }
        int n = Length(lo);
        // Split until every lower byte position spans its full continuation range where the higher ones differ.
        for (int i = 1; i < n; i++)
        {
            int m = (1 << (6 * i)) - 1;
            if ((lo & ~m) != (hi & ~m))
            {
                if ((lo & m) != 0)
                {
                    Split(lo, lo | m, result);
                    Split((lo | m) + 1, hi, result);
                    return;
                }
                if ((hi & m) != m)
                {
                    Split(lo, (hi & ~m) - 1, result);
                    Split(hi & ~m, hi, result);
                    return;
                }
            }
        }
        Span<byte> a = stackalloc byte[4], b = stackalloc byte[4];
        Encode(lo, a);
        Encode(hi, b);
        var seq = new ByteRange[n];
        for (int i = 0; i < n; i++) seq[i] = new(a[i], b[i]);
        result.Add(seq);
    }

    private static int Length(int cp) => cp <= 0x7F ? 1 : cp <= 0x7FF ? 2 : cp <= 0xFFFF ? 3 : 4;

    /// <summary>Writes the UTF-8 encoding of <paramref name="cp"/>; returns its length.</summary>
    public static int Encode(int cp, Span<byte> bytes)
    {
        switch (Length(cp))
        {
            case 1:
                bytes[0] = (byte)cp;
                return 1;
            case 2:
                bytes[0] = (byte)(0xC0 | (cp >> 6));
                bytes[1] = (byte)(0x80 | (cp & 0x3F));
                return 2;
            case 3:
                bytes[0] = (byte)(0xE0 | (cp >> 12));
                bytes[1] = (byte)(0x80 | ((cp >> 6) & 0x3F));
                bytes[2] = (byte)(0x80 | (cp & 0x3F));
                return 3;
            default:
                bytes[0] = (byte)(0xF0 | (cp >> 18));
                bytes[1] = (byte)(0x80 | ((cp >> 12) & 0x3F));
                bytes[2] = (byte)(0x80 | ((cp >> 6) & 0x3F));
                bytes[3] = (byte)(0x80 | (cp & 0x3F));
                return 4;
        }
    }
}
