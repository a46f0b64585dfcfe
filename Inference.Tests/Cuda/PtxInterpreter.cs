using System.Globalization;

namespace Inference.Tests.Cuda;

/// <summary>
/// Executes a hand-written PTX module on the CPU, instruction by instruction, where no GPU exists: the subset of PTX the
/// tensor-core matrix product (<c>Inference.Cuda/Ptx/gemm_tensor_core.ptx</c>), the flash prefill attention
/// (<c>flash_prefill_f16.ptx</c>) and the paged decode attention (<c>paged_attention_{f32,f16}.ptx</c>,
/// <c>paged_attention_reduce.ptx</c>) use, with the fragment layouts of <c>ldmatrix.m8n8.x4</c> (plain and
/// <c>.trans</c>), <c>mma.m16n8k16</c> and the lane exchange of <c>shfl.sync.bfly</c> as the PTX ISA defines them.
/// </summary>
/// <remarks>
/// <para>Each lane has its own program counter. A scheduling step executes the instruction at the smallest counter among
/// the warp's live lanes, for the lanes at it (guard applied); <c>bra</c> moves the lanes that take it to the label and
/// the others to the next instruction, and <c>ret</c> (or running off the end) retires lanes. Diverged lanes so
/// reconverge at the first instruction they share, which for forward branches and loops is where the hardware
/// reconverges too. The warp-wide instructions (<c>shfl.sync</c> with a full mask, <c>ldmatrix</c>, <c>mma</c>) must
/// find all 32 lanes at them and <c>bar.sync</c> every live lane. A CTA's warps run one after another up to each
/// <c>bar.sync</c>.</para>
/// <para>Checks besides the arithmetic: every global access within an allocation and aligned to its width; shared memory
/// read by <c>ldmatrix</c> only after a <c>cp.async</c> that wrote it was waited for by its thread (or a <c>st.shared</c>
/// wrote it) and a barrier followed, and not overwritten by a plain store before the next barrier;
/// a <c>cp.async</c> never targets shared bytes another copy has pending or that were read since the last barrier (a
/// write-after-read race). Plain <c>ld.shared</c>/<c>st.shared</c> are checked byte by byte: a read of bytes never
/// written, or written by another thread (or by a copy) without a <c>bar.sync</c> since, fails, and so does a store to
/// bytes another thread read or wrote since the last barrier.</para>
/// <para>NOTE: <c>mma</c> is modelled as <c>d = f32(c + Σ a·b)</c> with the 16 exact f16/bf16 products summed in float64
/// in k order and one rounding to f32. PTX leaves the tensor cores' internal rounding unspecified, so this fixes the
/// order of f32 accumulation across instructions exactly but a device may differ from the model in the last bits of
/// each mma.</para>
/// <para>NOTE: <c>ex2.approx.ftz.f32</c> is modelled as 2^x correctly rounded to f32 (subnormal inputs and results flushed
/// to zero). The hardware's approximation is not reproducible on the CPU, so a kernel using it is tested against a stated
/// error bound rather than bit for bit. Every other f32 instruction here is IEEE round-to-nearest, as in C#.</para>
/// </remarks>
internal sealed class PtxInterpreter
{
    private readonly Dictionary<string, Kernel> _kernels = [];

    private PtxInterpreter() { }

    public IReadOnlyCollection<string> Entries => _kernels.Keys;

    /// <summary>Global memory: one byte array, allocations 256-byte aligned from a 64-bit base address.</summary>
    public sealed class Memory
    {
        public const ulong Base = 0x1_0000_0000;
        private readonly List<(ulong Address, int Length)> _allocations = [];
        private byte[] _bytes = new byte[1 << 16];
        private int _used;

        public ulong Alloc(int length)
        {
            int start = (_used + 255) & ~255;
            if (start + length > _bytes.Length) Array.Resize(ref _bytes, Math.Max(_bytes.Length * 2, start + length + 256));
            _used = start + length;
            _allocations.Add((Base + (ulong)start, length));
            return Base + (ulong)start;
        }

        /// <summary>A new allocation holding <paramref name="data"/>; its address.</summary>
        public ulong Upload<T>(T[] data) where T : unmanaged
        {
            var bytes = System.Runtime.InteropServices.MemoryMarshal.AsBytes(data.AsSpan());
            ulong at = Alloc(bytes.Length);
            bytes.CopyTo(Bytes(at, bytes.Length));
            return at;
        }

        /// <summary>A new allocation of <paramref name="floats"/> floats, every one NaN (poison a kernel must overwrite); its address.</summary>
        public ulong Poisoned(int floats)
        {
            ulong at = Alloc(floats * 4);
            System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(Bytes(at, floats * 4)).Fill(float.NaN);
            return at;
        }

        public Span<byte> Bytes(ulong address, int length)
        {
            foreach (var (a, l) in _allocations)
                if (address >= a && address + (ulong)length <= a + (ulong)l) return _bytes.AsSpan((int)(address - Base), length);
            throw new InvalidOperationException($"global access of {length} bytes at 0x{address:X} is outside every allocation");
        }
    }

    /// <summary>float → bfloat16 bits, round to nearest even (NaN stays NaN), as <c>cvt.rn.bf16.f32</c>.</summary>
    public static ushort ToBf16(uint bits)
    {
        if ((bits & 0x7FFF_FFFF) > 0x7F80_0000) return (ushort)((bits >> 16) | 0x40);
        return (ushort)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
    }

    private sealed record Kernel(string Name, string[] Params, Dictionary<string, int> Shared, int SharedBytes, Instr[] Code,
        Dictionary<string, int> Labels, int RegisterCount);

    private enum Kind { Reg, Imm, Special, Symbol, Vector, Mem, Label }

    private sealed record Operand(Kind Kind, int Reg = -1, ulong Imm = 0, string Name = "", int[]? Regs = null, Operand? Base = null, long Offset = 0);

    private sealed record Instr(string Op, int GuardReg, bool GuardNegated, Operand[] Args, string Text);

    public static PtxInterpreter Parse(string source)
    {
        var result = new PtxInterpreter();
        var lines = source.Split('\n').Select(l => { int c = l.IndexOf("//", StringComparison.Ordinal); return (c >= 0 ? l[..c] : l).Trim(); })
            .Where(l => l.Length > 0).ToArray();
        for (int i = 0; i < lines.Length; i++)
        {
            if (!lines[i].StartsWith(".visible .entry ", StringComparison.Ordinal)) continue;
            string name = lines[i][".visible .entry ".Length..].TrimEnd('(').Trim();
            var parameters = new List<string>();
            for (i++; lines[i] != ")"; i++) parameters.Add(lines[i].TrimEnd(',').Split(' ', StringSplitOptions.RemoveEmptyEntries)[^1]);
            while (lines[i] != "{") i++;
            var body = new List<string>();
            for (i++; lines[i] != "}"; i++) body.Add(lines[i]);
            result._kernels[name] = Compile(name, [.. parameters], body);
        }
        return result;
    }

    private static Kernel Compile(string name, string[] parameters, List<string> body)
    {
        var shared = new Dictionary<string, int>();
        int sharedBytes = 0;
        var labels = new Dictionary<string, int>();
        var regs = new Dictionary<string, int>();
        var statements = new List<string>();
        foreach (var line in body)
        {
            if (line.StartsWith(".reg", StringComparison.Ordinal)) continue;
            if (line.StartsWith(".shared", StringComparison.Ordinal))
            {
                // .shared .align A .TYPE NAME[COUNT];
                var words = line.TrimEnd(';').Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries);
                var decl = words[^1];
                int open = decl.IndexOf('[');
                int align = words.Length == 5 && words[1] == ".align" ? int.Parse(words[2], CultureInfo.InvariantCulture) : 0;
                int elementBytes = words.Length == 5 ? ElementBytes(words[3]) : 0;
                if (open > 0 && decl.EndsWith(']') && align > 0 && (align & (align - 1)) == 0 && elementBytes > 0)
                {
                    sharedBytes = (sharedBytes + align - 1) / align * align;
                    shared[decl[..open]] = 0x400 + sharedBytes;   // shared window addresses start at 0x400
                    sharedBytes += elementBytes * int.Parse(decl[(open + 1)..^1], CultureInfo.InvariantCulture);
                    continue;
                }
                throw new NotSupportedException($"shared declaration: {line}");
            }
            if (line.EndsWith(':')) { labels[line[..^1]] = statements.Count; continue; }
            statements.Add(line);
        }
        var code = new Instr[statements.Count];
        for (int s = 0; s < statements.Count; s++)
        {
            string text = statements[s].TrimEnd(';').Trim();
            int guard = -1;
            bool negated = false;
            if (text.StartsWith('@'))
            {
                int sp = text.IndexOf(' ');
                string g = text[1..sp];
                negated = g.StartsWith('!');
                guard = Reg(regs, negated ? g[1..] : g);
                text = text[(sp + 1)..].Trim();
            }
            int space = text.IndexOfAny([' ', '\t']);
            string op = space < 0 ? text : text[..space];
            var args = space < 0 ? Array.Empty<Operand>() : SplitOperands(text[(space + 1)..]).Select(a => ParseOperand(a, regs, parameters, shared, labels)).ToArray();
            code[s] = new Instr(op, guard, negated, args, statements[s]);
        }
        return new Kernel(name, parameters, shared, sharedBytes, code, labels, regs.Count);
    }

    /// <summary>Bytes of a PTX fundamental type (<c>.b8</c>, <c>.u32</c>, <c>.f16</c>, ...), 0 if unknown.</summary>
    private static int ElementBytes(string type) => type switch
    {
        ".b8" or ".u8" or ".s8" => 1,
        ".b16" or ".u16" or ".s16" or ".f16" or ".bf16" => 2,
        ".b32" or ".u32" or ".s32" or ".f32" => 4,
        ".b64" or ".u64" or ".s64" or ".f64" => 8,
        _ => 0,
    };

    private static int Reg(Dictionary<string, int> regs, string name)
    {
        if (!regs.TryGetValue(name, out int index)) regs[name] = index = regs.Count;
        return index;
    }

    private static List<string> SplitOperands(string text)
    {
        var parts = new List<string>();
        int depth = 0, start = 0;
        for (int i = 0; i < text.Length; i++)
        {
            if (text[i] is '{' or '[') depth++;
            else if (text[i] is '}' or ']') depth--;
            else if (text[i] == ',' && depth == 0) { parts.Add(text[start..i].Trim()); start = i + 1; }
        }
        parts.Add(text[start..].Trim());
        return parts;
    }

    private static Operand ParseOperand(string a, Dictionary<string, int> regs, string[] parameters, Dictionary<string, int> shared, Dictionary<string, int> labels)
    {
        if (a.StartsWith('{'))
            return new Operand(Kind.Vector, Regs: a[1..^1].Split(',').Select(r => Reg(regs, r.Trim())).ToArray());
        if (a.StartsWith('['))
        {
            string inner = a[1..^1];
            long offset = 0;
            int plus = inner.IndexOf('+');
            if (plus >= 0)
            {
                offset = long.Parse(inner[(plus + 1)..], CultureInfo.InvariantCulture);
                inner = inner[..plus];
            }
            var b = parameters.Contains(inner) ? new Operand(Kind.Symbol, Name: inner) : ParseOperand(inner, regs, parameters, shared, labels);
            return new Operand(Kind.Mem, Base: b, Offset: offset);
        }
        if (a.StartsWith('%')) return new Operand(Kind.Special, Name: a);
        if (a.StartsWith("0x", StringComparison.Ordinal))
            return new Operand(Kind.Imm, Imm: ulong.Parse(a[2..], NumberStyles.HexNumber, CultureInfo.InvariantCulture));
        if (a.StartsWith("0f", StringComparison.Ordinal) && a.Length == 10)
            return new Operand(Kind.Imm, Imm: uint.Parse(a[2..], NumberStyles.HexNumber, CultureInfo.InvariantCulture));
        if (char.IsDigit(a[0]) || a[0] == '-') return new Operand(Kind.Imm, Imm: (ulong)long.Parse(a, CultureInfo.InvariantCulture));
        if (shared.TryGetValue(a, out int address)) return new Operand(Kind.Imm, Imm: (ulong)address);
        if (char.IsUpper(a[0])) return new Operand(Kind.Label, Name: a);   // labels are upper case in these modules
        return new Operand(Kind.Reg, Reg: Reg(regs, a));
    }

    /// <summary>Runs <paramref name="entry"/> over the grid; <paramref name="args"/> in parameter order (addresses as ulong).</summary>
    public void Launch(string entry, int gridX, int gridY, int threads, Memory memory, params ulong[] args) =>
        Launch(entry, (gridX, gridY, 1), threads, memory, args);

    /// <summary>Runs <paramref name="entry"/> over a three-dimensional grid.</summary>
    public void Launch(string entry, (int X, int Y, int Z) grid, int threads, Memory memory, params ulong[] args)
    {
        var kernel = _kernels[entry];
        if (args.Length != kernel.Params.Length) throw new ArgumentException($"{entry} takes {kernel.Params.Length} arguments, not {args.Length}");
        if (threads % 32 != 0) throw new ArgumentException("whole warps only");
        for (int z = 0; z < grid.Z; z++)
            for (int y = 0; y < grid.Y; y++)
                for (int x = 0; x < grid.X; x++)
                    new Cta(kernel, memory, args, (x, y, z), grid, threads).Run();
    }

    private sealed class Cta
    {
        private readonly Kernel _k;
        private readonly Memory _mem;
        private readonly ulong[] _args;
        private readonly (int X, int Y, int Z) _id, _grid;
        private readonly int _threads;
        private readonly byte[] _shared;
        private readonly int[] _pendingBy;       // per 16-byte shared chunk: thread with a copy in flight, or -1
        private readonly int[] _readEpoch;       // epoch it was last read in
        private readonly int[] _writer;          // per shared byte: thread of its last plain store, Async after a copy, -1 never written
        private readonly int[] _writeEpoch;      // epoch of that write
        private readonly int[] _reader;          // per shared byte: thread of its reads in _byteReadEpoch, Several if more than one
        private readonly int[] _byteReadEpoch;   // epoch it was last read in by a plain load or ldmatrix, -1 never
        private const int Async = -2, Several = -2;
        private readonly List<List<Copy>>[] _groups;
        private readonly List<Copy>[] _open;
        private int _epoch;

        private readonly record struct Copy(int Thread, int Dst, ulong Src, int Size);

        public Cta(Kernel k, Memory mem, ulong[] args, (int X, int Y, int Z) id, (int X, int Y, int Z) grid, int threads)
        {
            (_k, _mem, _args, _id, _grid, _threads) = (k, mem, args, id, grid, threads);
            _shared = new byte[k.SharedBytes];
            new Random(id.X * 7919 + id.Y * 31 + id.Z).NextBytes(_shared);   // poison
            int chunks = (k.SharedBytes + 15) / 16;
            _pendingBy = Enumerable.Repeat(-1, chunks).ToArray();
            _readEpoch = Enumerable.Repeat(-1, chunks).ToArray();
            _writer = Enumerable.Repeat(-1, k.SharedBytes).ToArray();
            _writeEpoch = Enumerable.Repeat(-1, k.SharedBytes).ToArray();
            _reader = Enumerable.Repeat(-1, k.SharedBytes).ToArray();
            _byteReadEpoch = Enumerable.Repeat(-1, k.SharedBytes).ToArray();
            _groups = Enumerable.Range(0, threads).Select(_ => new List<List<Copy>>()).ToArray();
            _open = Enumerable.Range(0, threads).Select(_ => new List<Copy>()).ToArray();
        }

        public void Run()
        {
            int warps = _threads / 32;
            var state = new Warp[warps];
            for (int w = 0; w < warps; w++) state[w] = new Warp(w, _k.RegisterCount);
            while (true)
            {
                for (int w = 0; w < warps; w++)
                    if (!state[w].Done && !state[w].AtBarrier) Step(state[w]);
                int done = state.Count(s => s.Done), waiting = state.Count(s => s.AtBarrier);
                if (done == warps) return;
                if (done > 0) throw new InvalidOperationException($"{_k.Name}: bar.sync with {done} warp(s) exited");
                if (waiting != warps) throw new InvalidOperationException("scheduler");
                _epoch++;
                foreach (var s in state) s.AtBarrier = false;
            }
        }

        private sealed class Warp
        {
            public Warp(int index, int registers)
            {
                Index = index;
                R = new ulong[registers * 32];
                Array.Fill(Live, true);
            }

            public int Index { get; }
            public int[] Pc { get; } = new int[32];      // per lane
            public bool[] Live { get; } = new bool[32];  // false once the lane retired
            public bool Done { get; set; }
            public bool AtBarrier { get; set; }
            public ulong[] R { get; }
        }

        private ulong Read(Warp w, Operand o, int lane) => o.Kind switch
        {
            Kind.Reg => w.R[o.Reg * 32 + lane],
            Kind.Imm => o.Imm,
            Kind.Special => o.Name switch
            {
                "%tid.x" => (ulong)(w.Index * 32 + lane),
                "%ntid.x" => (ulong)_threads,
                "%ctaid.x" => (ulong)_id.X,
                "%ctaid.y" => (ulong)_id.Y,
                "%ctaid.z" => (ulong)_id.Z,
                "%nctaid.x" => (ulong)_grid.X,
                "%nctaid.y" => (ulong)_grid.Y,
                "%nctaid.z" => (ulong)_grid.Z,
                _ => throw new NotSupportedException(o.Name),
            },
            _ => throw new NotSupportedException($"operand {o.Kind}"),
        };

        private ulong Address(Warp w, Operand mem, int lane) =>
            (mem.Base!.Kind == Kind.Symbol ? 0 : Read(w, mem.Base, lane)) + (ulong)mem.Offset;

        /// <summary>Runs the warp until it reaches a <c>bar.sync</c> or all its lanes retired.</summary>
        private void Step(Warp w)
        {
            var atPc = new bool[32];
            var active = new bool[32];
            while (true)
            {
                // the smallest program counter among the live lanes; the lanes there execute
                int pc = int.MaxValue, live = 0;
                for (int lane = 0; lane < 32; lane++)
                    if (w.Live[lane])
                    {
                        live++;
                        pc = Math.Min(pc, w.Pc[lane]);
                    }
                if (live == 0)
                {
                    w.Done = true;
                    return;
                }
                int here = 0;
                for (int lane = 0; lane < 32; lane++)
                {
                    atPc[lane] = w.Live[lane] && w.Pc[lane] == pc;
                    if (atPc[lane]) here++;
                }
                if (pc >= _k.Code.Length)   // ran off the end: the lanes retire
                {
                    for (int lane = 0; lane < 32; lane++) if (atPc[lane]) w.Live[lane] = false;
                    continue;
                }
                var ins = _k.Code[pc];
                var a = ins.Args;
                for (int lane = 0; lane < 32; lane++)
                {
                    active[lane] = atPc[lane] && (ins.GuardReg < 0 || ((w.R[ins.GuardReg * 32 + lane] != 0) ^ ins.GuardNegated));
                    if (atPc[lane]) w.Pc[lane] = pc + 1;
                }
                string op = ins.Op;
                switch (op)
                {
                    case "bra":
                    {
                        int target = _k.Labels[a[0].Name];
                        for (int lane = 0; lane < 32; lane++) if (active[lane]) w.Pc[lane] = target;
                        continue;
                    }
                    case "ret":
                        for (int lane = 0; lane < 32; lane++) if (active[lane]) w.Live[lane] = false;
                        continue;
                    case "bar.sync":
                        if (ins.GuardReg >= 0) throw new NotSupportedException($"{_k.Name}: guarded bar.sync");
                        if (here != live) throw new InvalidOperationException($"{_k.Name}: bar.sync reached by {here} of the {live} live lanes of warp {w.Index}");
                        w.AtBarrier = true;
                        return;
                    case "ldmatrix.sync.aligned.m8n8.x4.shared.b16":
                        WholeWarp(ins, active);
                        LdMatrix(w, a[0].Regs!, a[1], transpose: false);
                        continue;
                    case "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16":
                        WholeWarp(ins, active);
                        LdMatrix(w, a[0].Regs!, a[1], transpose: true);
                        continue;
                    case "shfl.sync.bfly.b32":
                        Shuffle(w, a, active);
                        continue;
                    case "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32":
                        WholeWarp(ins, active);
                        Mma(w, a, bf16: false);
                        continue;
                    case "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32":
                        WholeWarp(ins, active);
                        Mma(w, a, bf16: true);
                        continue;
                }
                for (int lane = 0; lane < 32; lane++)
                {
                    if (!active[lane]) continue;
                    int thread = w.Index * 32 + lane;
                    ulong R(int i) => Read(w, a[i], lane);
                    void Set(ulong v) => w.R[a[0].Reg * 32 + lane] = v;
                    if (op.StartsWith("setp.", StringComparison.Ordinal))
                    {
                        Set(Setp(op, ins, a, lane, w) ? 1UL : 0UL);
                        continue;
                    }
                    switch (op)
                    {
                        case "ld.param.u64": case "ld.param.u32": case "ld.param.f32":
                            Set(_args[Array.IndexOf(_k.Params, a[1].Base!.Name)]);
                            break;
                        case "cvta.to.global.u64": case "mov.u64": case "mov.u32": case "mov.f32": case "mov.pred": case "cvt.u64.u32": case "mov.b16":
                            Set(R(1));
                            break;
                        case "mov.b32":
                            if (a[0].Kind == Kind.Vector)   // {lo, hi} = the two 16-bit halves
                            {
                                ulong v = R(1);
                                w.R[a[0].Regs![0] * 32 + lane] = v & 0xFFFF;
                                w.R[a[0].Regs![1] * 32 + lane] = (v >> 16) & 0xFFFF;
                            }
                            else Set((uint)R(1));
                            break;
                        case "add.u32": Set((uint)(R(1) + R(2))); break;
                        case "add.u64": Set(R(1) + R(2)); break;
                        case "sub.u32": Set((uint)(R(1) - R(2))); break;
                        case "min.u32": Set(Math.Min((uint)R(1), (uint)R(2))); break;
                        case "max.u32": Set(Math.Max((uint)R(1), (uint)R(2))); break;
                        case "mul.lo.u64": Set(R(1) * R(2)); break;
                        case "add.f32": case "add.rn.f32": Set(Bits(F(R(1)) + F(R(2)))); break;
                        case "sub.f32": case "sub.rn.f32": Set(Bits(F(R(1)) - F(R(2)))); break;
                        case "mul.f32": case "mul.rn.f32": Set(Bits(F(R(1)) * F(R(2)))); break;
                        case "fma.rn.f32": Set(Bits(MathF.FusedMultiplyAdd(F(R(1)), F(R(2)), F(R(3))))); break;
                        case "div.rn.f32": Set(Bits(F(R(1)) / F(R(2)))); break;
                        case "max.f32": Set(Bits(MaxF32(F(R(1)), F(R(2))))); break;
                        case "ex2.approx.ftz.f32": Set(Bits(Ex2Ftz(F(R(1))))); break;
                        case "selp.f32": Set(R(3) != 0 ? R(1) : R(2)); break;
                        case "cvt.rn.f16x2.f32":   // d = {a -> upper half, b -> lower half}
                            Set(BitConverter.HalfToUInt16Bits((Half)F(R(2))) | (ulong)BitConverter.HalfToUInt16Bits((Half)F(R(1))) << 16);
                            break;
                        case "cvt.rn.f32.s32":   // exact below 2^24 in magnitude, else rounded to nearest even
                            Set(Bits((float)(int)(uint)R(1)));
                            break;
                        case "bfe.s32":   // bits pos .. pos + len - 1 of a, sign-extended from the highest
                        {
                            int pos = (int)(R(2) & 0xFF), len = (int)(R(3) & 0xFF);
                            if (len is < 1 or > 32 || pos + len > 32) throw new NotSupportedException($"{_k.Name}: bfe.s32 of bits {pos} .. {pos + len - 1}");
                            Set((uint)((int)((uint)R(1) << (32 - pos - len)) >> (32 - len)));
                            break;
                        }
                        case "bfe.u32":   // bits pos .. pos + len - 1 of a, zero-extended
                        {
                            int pos = (int)(R(2) & 0xFF), len = (int)(R(3) & 0xFF);
                            if (len is < 1 or > 32 || pos + len > 32) throw new NotSupportedException($"{_k.Name}: bfe.u32 of bits {pos} .. {pos + len - 1}");
                            Set((uint)R(1) << (32 - pos - len) >> (32 - len));
                            break;
                        }
                        case "ld.global.nc.u16": case "ld.global.nc.b16":   // zero-extended into the register
                            Set(BitConverter.ToUInt16(Global(Address(w, a[1], lane), 2)));
                            break;
                        case "cvt.f32.f16":   // exact
                            Set(Bits((float)BitConverter.UInt16BitsToHalf((ushort)R(1))));
                            break;
                        case "ld.global.nc.u32":
                            Set(BitConverter.ToUInt32(Global(Address(w, a[1], lane), 4)));
                            break;
                        case "ld.global.nc.v2.f32": case "ld.global.v2.f32":
                        case "ld.global.nc.v4.f32": case "ld.global.nc.v4.b32": case "ld.global.v4.f32":
                        {
                            var regs = a[0].Regs!;
                            var bytes = Global(Address(w, a[1], lane), 4 * regs.Length);
                            for (int e = 0; e < regs.Length; e++) w.R[regs[e] * 32 + lane] = BitConverter.ToUInt32(bytes[(4 * e)..]);
                            break;
                        }
                        case "st.global.v2.f32": case "st.global.v4.f32":
                        {
                            var regs = a[1].Regs!;
                            var bytes = Global(Address(w, a[0], lane), 4 * regs.Length);
                            for (int e = 0; e < regs.Length; e++) BitConverter.TryWriteBytes(bytes[(4 * e)..], (uint)w.R[regs[e] * 32 + lane]);
                            break;
                        }
                        case "ld.shared.u32": case "ld.shared.b32": case "ld.shared.f32":
                            Set(BitConverter.ToUInt32(LoadShared(thread, (int)Address(w, a[1], lane), 4)));
                            break;
                        case "st.shared.u32": case "st.shared.b32": case "st.shared.f32":
                        {
                            Span<byte> value = stackalloc byte[4];
                            BitConverter.TryWriteBytes(value, (uint)R(1));
                            StoreShared(thread, (int)Address(w, a[0], lane), value);
                            break;
                        }
                        case "st.shared.v4.b32":
                        {
                            var regs = a[1].Regs!;
                            Span<byte> value = stackalloc byte[4 * regs.Length];
                            for (int e = 0; e < regs.Length; e++) BitConverter.TryWriteBytes(value[(4 * e)..], (uint)w.R[regs[e] * 32 + lane]);
                            StoreShared(thread, (int)Address(w, a[0], lane), value);
                            break;
                        }
                        case "mul.lo.u32": Set((uint)(R(1) * R(2))); break;
                        case "mad.lo.u32": Set((uint)(R(1) * R(2) + R(3))); break;
                        case "mul.wide.u32": Set((ulong)(uint)R(1) * (uint)R(2)); break;
                        case "div.u32": Set((uint)R(1) / (uint)R(2)); break;
                        case "rem.u32": Set((uint)R(1) % (uint)R(2)); break;
                        case "shl.b32": Set(R(2) >= 32 ? 0 : (uint)(R(1) << (int)R(2))); break;
                        case "shl.b64": Set(R(2) >= 64 ? 0 : R(1) << (int)R(2)); break;
                        case "shr.u32": Set(R(2) >= 32 ? 0 : (uint)R(1) >> (int)R(2)); break;
                        case "and.b32": Set((uint)(R(1) & R(2))); break;
                        case "xor.b32": Set((uint)(R(1) ^ R(2))); break;
                        case "or.b32": Set((uint)(R(1) | R(2))); break;
                        case "and.pred": Set(R(1) != 0 && R(2) != 0 ? 1UL : 0UL); break;
                        case "selp.u32": case "selp.b64": Set(R(3) != 0 ? R(1) : R(2)); break;
                        case "cp.async.cg.shared.global":
                            IssueCopy(thread, (int)Address(w, a[0], lane), Address(w, a[1], lane), (int)R(2), (int)R(3));
                            break;
                        case "cp.async.commit_group":
                            _groups[thread].Add(_open[thread]);
                            _open[thread] = [];
                            break;
                        case "cp.async.wait_group":
                            while (_groups[thread].Count > (int)R(0))
                            {
                                foreach (var c in _groups[thread][0]) Land(c);
                                _groups[thread].RemoveAt(0);
                            }
                            break;
                        case "st.global.f32":
                            BitConverter.TryWriteBytes(Global(Address(w, a[0], lane), 4), (uint)R(1));
                            break;
                        case "st.global.b16":
                            BitConverter.TryWriteBytes(Global(Address(w, a[0], lane), 2), (ushort)R(1));
                            break;
                        case "ld.global.nc.f32": case "ld.global.f32":
                            Set(BitConverter.ToUInt32(Global(Address(w, a[1], lane), 4)));
                            break;
                        case "cvt.rn.f16.f32":
                            Set(BitConverter.HalfToUInt16Bits((Half)BitConverter.UInt32BitsToSingle((uint)R(1))));
                            break;
                        case "cvt.rn.bf16.f32":
                            Set(ToBf16((uint)R(1)));
                            break;
                        default:
                            throw new NotSupportedException($"{_k.Name}: instruction '{ins.Text}'");
                    }
                }
            }
        }

        /// <summary>A warp-wide instruction: all 32 lanes must be at it, none masked off by a guard.</summary>
        private void WholeWarp(Instr ins, bool[] active)
        {
            if (active.Any(x => !x)) throw new InvalidOperationException($"{_k.Name}: '{ins.Text}' reached by part of a warp");
        }

        /// <summary>A global access of <paramref name="length"/> bytes, within an allocation and aligned to its width.</summary>
        private Span<byte> Global(ulong address, int length)
        {
            if (address % (ulong)length != 0) throw new InvalidOperationException($"{_k.Name}: misaligned {length}-byte global access at 0x{address:X}");
            return _mem.Bytes(address, length);
        }

        /// <summary>setp.CMP[.BOOL].TYPE d, a, b[, c]: ordered float comparisons (false with a NaN), integers by type;
        /// with <c>.and</c>/<c>.or</c>/<c>.xor</c> the result is combined with predicate c.</summary>
        private bool Setp(string op, Instr ins, Operand[] a, int lane, Warp w)
        {
            var parts = op.Split('.');   // setp, cmp, [bool], type
            string cmp = parts[1], type = parts[^1];
            ulong x = Read(w, a[1], lane), y = Read(w, a[2], lane);
            int order;   // sign of x - y; 2 when unordered
            switch (type)
            {
                case "u32": order = ((uint)x).CompareTo((uint)y); break;
                case "s32": order = ((int)(uint)x).CompareTo((int)(uint)y); break;
                case "u64": order = x.CompareTo(y); break;
                case "s64": order = ((long)x).CompareTo((long)y); break;
                case "f32":
                {
                    float fx = F(x), fy = F(y);
                    order = float.IsNaN(fx) || float.IsNaN(fy) ? 2 : fx < fy ? -1 : fx > fy ? 1 : 0;
                    break;
                }
                default: throw new NotSupportedException($"{_k.Name}: instruction '{ins.Text}'");
            }
            bool result = order != 2 && cmp switch
            {
                "eq" => order == 0,
                "ne" => order != 0,
                "lt" => order < 0,
                "le" => order <= 0,
                "gt" => order > 0,
                "ge" => order >= 0,
                _ => throw new NotSupportedException($"{_k.Name}: instruction '{ins.Text}'"),
            };
            if (parts.Length == 3) return result;
            bool c = Read(w, a[3], lane) != 0;
            return parts[2] switch
            {
                "and" => result && c,
                "or" => result || c,
                "xor" => result ^ c,
                _ => throw new NotSupportedException($"{_k.Name}: instruction '{ins.Text}'"),
            };
        }

        private static float F(ulong bits) => BitConverter.UInt32BitsToSingle((uint)bits);

        private static ulong Bits(float value) => BitConverter.SingleToUInt32Bits(value);

        /// <summary>max.f32: a NaN operand yields the other operand.</summary>
        private static float MaxF32(float a, float b) => float.IsNaN(a) ? b : float.IsNaN(b) ? a : MathF.Max(a, b);

        /// <summary>ex2.approx.ftz.f32, modelled as 2^x correctly rounded (see the class remarks), subnormals flushed.</summary>
        private static float Ex2Ftz(float x)
        {
            if (float.IsSubnormal(x)) x = 0f;
            float r = (float)Math.Pow(2, x);
            return float.IsSubnormal(r) ? 0f : r;
        }

        /// <summary>shfl.sync.bfly.b32 d, a, b, c, mask: lane t reads a from lane t ^ b (c = 31: the whole warp, full mask only).</summary>
        private void Shuffle(Warp w, Operand[] a, bool[] active)
        {
            if (active.Any(x => !x) || (uint)Read(w, a[4], 0) != 0xFFFF_FFFF || Read(w, a[3], 0) != 31)
                throw new NotSupportedException($"{_k.Name}: shfl.sync with a partial warp or clamp other than 31");
            var src = new ulong[32];
            for (int lane = 0; lane < 32; lane++) src[lane] = Read(w, a[1], lane);
            for (int lane = 0; lane < 32; lane++) w.R[a[0].Reg * 32 + lane] = src[lane ^ ((int)Read(w, a[2], lane) & 31)];
        }

        private int Chunk(int sharedAddress, int length)
        {
            int offset = sharedAddress - 0x400;
            if (offset < 0 || offset + length > _shared.Length) throw new InvalidOperationException($"{_k.Name}: shared access at 0x{sharedAddress:X} out of range");
            if (offset % 16 != 0) throw new InvalidOperationException($"{_k.Name}: shared access at 0x{sharedAddress:X} not 16-byte aligned");
            return offset / 16;
        }

        private void IssueCopy(int thread, int dst, ulong src, int cpSize, int srcSize)
        {
            if (cpSize != 16 || srcSize is < 0 or > 16) throw new InvalidOperationException($"{_k.Name}: cp.async sizes {cpSize}/{srcSize}");
            if (src % 16 != 0) throw new InvalidOperationException($"{_k.Name}: cp.async source 0x{src:X} not 16-byte aligned");
            int chunk = Chunk(dst, 16);
            if (_pendingBy[chunk] >= 0) throw new InvalidOperationException($"{_k.Name}: two copies in flight to shared 0x{dst:X}");
            if (_readEpoch[chunk] == _epoch) throw new InvalidOperationException($"{_k.Name}: cp.async overwrites shared 0x{dst:X} read since the last barrier");
            for (int i = chunk * 16; i < chunk * 16 + 16; i++)
                if (_writer[i] >= 0 && _writer[i] != thread && _writeEpoch[i] == _epoch)
                    throw new InvalidOperationException($"{_k.Name}: cp.async overwrites shared 0x{dst:X} thread {_writer[i]} stored to since the last barrier");
            if (srcSize > 0) _mem.Bytes(src, srcSize);   // bounds check at issue
            _pendingBy[chunk] = thread;
            _open[thread].Add(new Copy(thread, dst, src, srcSize));
        }

        private void Land(Copy c)
        {
            int chunk = Chunk(c.Dst, 16);
            var dst = _shared.AsSpan(chunk * 16, 16);
            dst.Clear();
            if (c.Size > 0) _mem.Bytes(c.Src, c.Size).CopyTo(dst);
            _pendingBy[chunk] = -1;
            _writer.AsSpan(chunk * 16, 16).Fill(Async);
            _writeEpoch.AsSpan(chunk * 16, 16).Fill(_epoch);
        }

        /// <summary>The shared offset of a plain access of <paramref name="length"/> bytes: in range, aligned to its width,
        /// and not in a chunk a copy has in flight.</summary>
        private int PlainShared(int address, int length)
        {
            int offset = address - 0x400;
            if (offset < 0 || offset + length > _shared.Length) throw new InvalidOperationException($"{_k.Name}: shared access at 0x{address:X} out of range");
            if (offset % length != 0) throw new InvalidOperationException($"{_k.Name}: shared access of {length} bytes at 0x{address:X} misaligned");
            if (_pendingBy[offset / 16] >= 0) throw new InvalidOperationException($"{_k.Name}: accesses shared 0x{address:X} while a copy to it is in flight");
            return offset;
        }

        /// <summary>ld.shared: every byte written before, by this thread or before a barrier since.</summary>
        private ReadOnlySpan<byte> LoadShared(int thread, int address, int length)
        {
            int offset = PlainShared(address, length);
            for (int i = offset; i < offset + length; i++)
            {
                if (_writer[i] == -1) throw new InvalidOperationException($"{_k.Name}: thread {thread} reads shared 0x{address:X} never written");
                if (_writer[i] != thread && _writeEpoch[i] >= _epoch)
                    throw new InvalidOperationException($"{_k.Name}: thread {thread} reads shared 0x{address:X} written by {(_writer[i] == Async ? "a copy" : $"thread {_writer[i]}")} without a barrier between");
                _reader[i] = _byteReadEpoch[i] == _epoch && _reader[i] != thread ? Several : thread;
                _byteReadEpoch[i] = _epoch;
            }
            _readEpoch[offset / 16] = _epoch;
            return _shared.AsSpan(offset, length);
        }

        /// <summary>st.shared: no other thread read or wrote these bytes since the last barrier.</summary>
        private void StoreShared(int thread, int address, ReadOnlySpan<byte> value)
        {
            int offset = PlainShared(address, value.Length);
            for (int i = offset; i < offset + value.Length; i++)
            {
                if (_byteReadEpoch[i] == _epoch && _reader[i] != thread)
                    throw new InvalidOperationException($"{_k.Name}: thread {thread} overwrites shared 0x{address:X} another thread read since the last barrier");
                if (_writer[i] != -1 && _writer[i] != thread && _writeEpoch[i] == _epoch)
                    throw new InvalidOperationException($"{_k.Name}: thread {thread} and {(_writer[i] == Async ? "a copy" : $"thread {_writer[i]}")} write shared 0x{address:X} with no barrier between");
                _writer[i] = thread;
                _writeEpoch[i] = _epoch;
            }
            value.CopyTo(_shared.AsSpan(offset));
        }

        private ReadOnlySpan<byte> ReadShared(int address)
        {
            int chunk = Chunk(address, 16);
            if (_pendingBy[chunk] >= 0) throw new InvalidOperationException($"{_k.Name}: reads shared 0x{address:X} while a copy to it is in flight");
            for (int i = chunk * 16; i < chunk * 16 + 16; i++)
            {
                if (_writer[i] == -1) throw new InvalidOperationException($"{_k.Name}: reads shared 0x{address:X} never written");
                if (_writeEpoch[i] >= _epoch)
                    throw new InvalidOperationException(_writer[i] == Async
                        ? $"{_k.Name}: reads shared 0x{address:X} without a barrier after its copy landed"
                        : $"{_k.Name}: reads shared 0x{address:X} stored by thread {_writer[i]} without a barrier between");
                _reader[i] = Several;   // the row goes to other lanes: no thread may store over it before a barrier
                _byteReadEpoch[i] = _epoch;
            }
            _readEpoch[chunk] = _epoch;
            return _shared.AsSpan(chunk * 16, 16);
        }

        /// <summary>ldmatrix.m8n8.x4.b16: lanes 8q..8q+7 give the row addresses of matrix q; register q of lane t holds
        /// row t / 4, elements 2 (t % 4) and 2 (t % 4) + 1 of matrix q; with .trans, rows 2 (t % 4) and 2 (t % 4) + 1 of
        /// element (column) t / 4.</summary>
        private void LdMatrix(Warp w, int[] dst, Operand mem, bool transpose)
        {
            var rows = new ushort[4, 8, 8];
            for (int lane = 0; lane < 32; lane++)
            {
                var row = ReadShared((int)Address(w, mem, lane));
                for (int e = 0; e < 8; e++) rows[lane / 8, lane % 8, e] = BitConverter.ToUInt16(row[(2 * e)..]);
            }
            for (int t = 0; t < 32; t++)
                for (int q = 0; q < 4; q++)
                    w.R[dst[q] * 32 + t] = transpose
                        ? rows[q, t % 4 * 2, t / 4] | (ulong)rows[q, t % 4 * 2 + 1, t / 4] << 16
                        : rows[q, t / 4, t % 4 * 2] | (ulong)rows[q, t / 4, t % 4 * 2 + 1] << 16;
        }

        /// <summary>mma.m16n8k16.row.col, f32 accumulators; fragment layouts of the PTX ISA (groupID = lane >> 2,
        /// threadID_in_group = lane &amp; 3).</summary>
        private static void Mma(Warp w, Operand[] a, bool bf16)
        {
            var A = new double[16, 16];
            var B = new double[16, 8];
            var C = new float[16, 8];
            for (int t = 0; t < 32; t++)
            {
                int g = t >> 2, q = t & 3;
                for (int j = 0; j < 4; j++)   // A register j: row g + 8 (j & 1), columns 2q + 8 (j >> 1) + {0, 1}
                {
                    ulong v = w.R[a[1].Regs![j] * 32 + t];
                    A[g + 8 * (j & 1), 2 * q + 8 * (j >> 1)] = Element((ushort)v, bf16);
                    A[g + 8 * (j & 1), 2 * q + 8 * (j >> 1) + 1] = Element((ushort)(v >> 16), bf16);
                }
                for (int j = 0; j < 2; j++)   // B register j: rows (k) 2q + 8j + {0, 1}, column g
                {
                    ulong v = w.R[a[2].Regs![j] * 32 + t];
                    B[2 * q + 8 * j, g] = Element((ushort)v, bf16);
                    B[2 * q + 8 * j + 1, g] = Element((ushort)(v >> 16), bf16);
                }
                for (int i = 0; i < 4; i++)   // C register i: row g + 8 (i >> 1), column 2q + (i & 1)
                    C[g + 8 * (i >> 1), 2 * q + (i & 1)] = BitConverter.UInt32BitsToSingle((uint)w.R[a[3].Regs![i] * 32 + t]);
            }
            for (int t = 0; t < 32; t++)
            {
                int g = t >> 2, q = t & 3;
                for (int i = 0; i < 4; i++)
                {
                    int r = g + 8 * (i >> 1), c = 2 * q + (i & 1);
                    w.R[a[0].Regs![i] * 32 + t] = BitConverter.SingleToUInt32Bits(MmaElement(C[r, c], A, B, r, c));
                }
            }
        }

        private static float MmaElement(float c, double[,] a, double[,] b, int r, int col)
        {
            double sum = c;
            for (int k = 0; k < 16; k++) sum += a[r, k] * b[k, col];
            return (float)sum;
        }

        private static double Element(ushort bits, bool bf16) =>
            bf16 ? BitConverter.UInt32BitsToSingle((uint)bits << 16) : (double)BitConverter.UInt16BitsToHalf(bits);
    }
}
