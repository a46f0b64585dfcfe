namespace Inference.Tokenization;

/// <summary>
/// GPT-2's reversible byte-to-character mapping: every byte gets a printable character so byte-level BPE can work on
/// strings. Printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') map to themselves; the other 68 bytes map, in
/// increasing order, to U+0100, U+0101, … (so ' ' becomes 'Ġ' U+0120 and '\n' becomes 'Ċ' U+010A).
/// </summary>
internal static class ByteLevelMapping
{
    private static readonly char[] ByteToChar = BuildByteToChar();
    private static readonly short[] CharToByte = BuildCharToByte(); // indexed by char code below 0x200; -1 = not mapped

    /// <summary>The character that stands for <paramref name="b"/>.</summary>
    public static char ToChar(byte b) => ByteToChar[b];

    /// <summary>The byte a mapped character stands for, or -1 when <paramref name="c"/> is not in the mapping.</summary>
    public static int ToByte(char c) => c < CharToByte.Length ? CharToByte[c] : -1;

    /// <summary>
    /// Undoes the mapping for a whole token string. Returns false (and leaves <paramref name="bytes"/> undefined) when
    /// a character is outside the mapping, which happens for added tokens stored as raw text.
    /// </summary>
    public static bool TryToBytes(string text, out byte[] bytes)
    {
        bytes = new byte[text.Length];
        for (int i = 0; i < text.Length; i++)
        {
            int b = ToByte(text[i]);
            if (b < 0) return false;
            bytes[i] = (byte)b;
        }
        return true;
    }

    private static bool IsPrintable(int b) => b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;

    private static char[] BuildByteToChar()
    {
        var map = new char[256];
        int next = 256;
        for (int b = 0; b < 256; b++) map[b] = IsPrintable(b) ? (char)b : (char)next++;
        return map;
    }

    private static short[] BuildCharToByte()
    {
        var map = new short[0x200];
        Array.Fill(map, (short)-1);
        for (int b = 0; b < 256; b++) map[ByteToChar[b]] = (short)b;
        return map;
    }
}
