namespace Inference.Sampling;

/// <summary>
/// The rows of one step whose tokens a device sampler chooses (<see cref="SamplingMath"/>'s chain, as
/// <see cref="Sampler"/>), described by <see cref="Sampler.AddDeviceRow"/>; the executor writes the choices to
/// <see cref="Tokens"/>. Arrays grow and are reused: no allocation per step once warm.
/// </summary>
/// <remarks>
/// <code>
///  per row r:        Ints [2r..2r+1] = logit row, top-k · Floats [4r..4r+3] = temperature, top-p, min-p, draw
///  per penalty e:    PenaltyInts [2e..2e+1] = logit row · vocab + token, flags (Repeat | Subtract)
///                    PenaltyFloats [2e..2e+1] = repetition penalty, amount subtracted
/// </code>
/// A token has at most one entry with <see cref="Repeat"/> and one with <see cref="Subtract"/> per row; every Repeat
/// entry is applied before any Subtract entry (the host's order).
/// </remarks>
internal sealed class DeviceSamplingRows
{
    /// <summary>Flag: divide a positive logit by (multiply a negative one by) the repetition penalty.</summary>
    public const int Repeat = 1;

    /// <summary>Flag: subtract the frequency and presence penalties' amount.</summary>
    public const int Subtract = 2;

    /// <summary>Rows described.</summary>
    public int Count { get; private set; }

    /// <summary>Penalty entries described.</summary>
    public int PenaltyCount { get; private set; }

    /// <summary>Per row: logit row, top-k.</summary>
    public int[] Ints { get; private set; } = new int[32];

    /// <summary>Per row: temperature, top-p, min-p, draw.</summary>
    public float[] Floats { get; private set; } = new float[64];

    /// <summary>Per entry: index into the step's logits, flags.</summary>
    public int[] PenaltyInts { get; private set; } = new int[64];

    /// <summary>Per entry: repetition penalty, amount subtracted.</summary>
    public float[] PenaltyFloats { get; private set; } = new float[64];

    /// <summary>Per row: the chosen token.</summary>
    public int[] Tokens { get; private set; } = new int[16];

    /// <summary>Vocabulary size (the stride of the logit rows).</summary>
    public int VocabSize { get; set; }

    /// <summary>Forgets every row.</summary>
    public void Clear()
    {
        Count = 0;
        PenaltyCount = 0;
    }

    /// <summary>Adds a row.</summary>
    public void AddRow(int logitRow, float temperature, int topK, float topP, float minP, float draw)
    {
        int r = Count;
        if (Tokens.Length <= r)
        {
            int size = 2 * Tokens.Length;
            Tokens = Grow(Tokens, size);
            Ints = Grow(Ints, 2 * size);
            Floats = Grow(Floats, 4 * size);
        }
        Ints[2 * r] = logitRow;
        Ints[2 * r + 1] = topK;
        Floats[4 * r] = temperature;
        Floats[4 * r + 1] = topP;
        Floats[4 * r + 2] = minP;
        Floats[4 * r + 3] = draw;
        Tokens[r] = -1;
        Count = r + 1;
    }

    /// <summary>Adds a penalty entry for <paramref name="token"/> of logit row <paramref name="logitRow"/>.</summary>
    public void AddPenalty(int logitRow, int token, int flags, float repetition, float subtract)
    {
        int e = PenaltyCount;
        if (2 * e + 2 > PenaltyInts.Length)
        {
            PenaltyInts = Grow(PenaltyInts, 2 * PenaltyInts.Length);
            PenaltyFloats = Grow(PenaltyFloats, 2 * PenaltyFloats.Length);
        }
        PenaltyInts[2 * e] = logitRow * VocabSize + token;
        PenaltyInts[2 * e + 1] = flags;
        PenaltyFloats[2 * e] = repetition;
        PenaltyFloats[2 * e + 1] = subtract;
        PenaltyCount = e + 1;
    }

    private static T[] Grow<T>(T[] a, int size)
    {
        var b = new T[size];
        a.CopyTo(b, 0);
        return b;
    }
}
