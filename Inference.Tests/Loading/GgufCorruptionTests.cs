using System.Text;
using Inference.Loading;
using Inference.Tests.Support;

namespace Inference.Tests.Loading;

/// <summary>
/// Malformed GGUF files must fail with a one-line <see cref="ModelFormatException"/> naming the file and an offset: never
/// another exception type, a hang, or an allocation out of proportion to the file.
/// </summary>
public class GgufCorruptionTests
{
    private const string FakePath = "/models/corrupt.gguf";

    // ---- helpers ---------------------------------------------------------------------------------------------------

    /// <summary>A small valid file: every value type, arrays, and three tensors of different types.</summary>
    private static byte[] ValidFile(uint alignment = 32)
    {
        using var ms = new MemoryStream();
        using (var w = new GgufWriter(ms, new GgufWriterOptions { Alignment = alignment }))
        {
            w.AddString("general.architecture", "llama");
            w.AddUInt32("llama.block_count", 1);
            w.AddUInt8("u8", 7);
            w.AddInt16("i16", -3);
            w.AddUInt64("u64", 1UL << 40);
            w.AddFloat64("f64", 0.5);
            w.AddBool("flag", true);
            w.AddStringArray("tokenizer.ggml.tokens", ["<unk>", "<s>", "</s>", "▁a", "b"]);
            w.AddArray<float>("tokenizer.ggml.scores", [0f, 0f, 0f, -1f, -2f]);
            w.AddArray<int>("tokenizer.ggml.token_type", [2, 3, 3, 1, 1]);
            var sizes = new[]
            {
                w.AddTensorInfo("token_embd.weight", [32, 5], GgmlType.F16),
                w.AddTensorInfo("output_norm.weight", [32], GgmlType.F32),
                w.AddTensorInfo("output.weight", [32, 5], GgmlType.Q8_0),
            };
            w.WriteHeader();
            var rng = new Random(5);
            string[] names = ["token_embd.weight", "output_norm.weight", "output.weight"];
            for (int i = 0; i < 3; i++)
            {
                var data = new byte[sizes[i]];
                rng.NextBytes(data);
                w.WriteTensorData(names[i], data);
            }
            w.Complete();
        }
        return ms.ToArray();
    }

    /// <summary>Parses <paramref name="bytes"/> and checks the failure, or returns null when it loads.</summary>
    /// <remarks>NOTE: plain checks with <c>Assert.Fail</c> rather than <c>Assert.That</c>: this runs thousands of times.</remarks>
    private static ModelFormatException? TryParse(byte[] bytes)
    {
        long before = GC.GetAllocatedBytesForCurrentThread();
        ModelFormatException? failure = null;
        try
        {
            using var f = GgufFile.OpenBuffer(bytes, FakePath);
        }
        catch (ModelFormatException e)
        {
            failure = e;
        }
        catch (Exception e)
        {
            Assert.Fail($"expected ModelFormatException, got {e.GetType().Name}: {e.Message} (input {Convert.ToHexString(bytes.AsSpan(0, Math.Min(bytes.Length, 256)))})");
        }
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        // Parsed metadata can legitimately take a few times the file size (strings are UTF-16, arrays are boxed);
        // a corrupt count must never make the reader allocate by what the file claims.
        if (allocated > 256 * 1024 + 16L * bytes.Length)
            Assert.Fail($"allocated {allocated} bytes parsing a {bytes.Length}-byte file ({failure?.Message ?? "loaded"})");
        if (failure is not null) AssertWellFormed(failure, bytes.Length);
        return failure;
    }

    private static void AssertWellFormed(ModelFormatException e, long fileLength)
    {
        var m = e.Message;
        if (m.Contains('\n') || m.Contains('\r')) Assert.Fail($"message is not one line: {m}");
        if (!m.StartsWith(e.FilePath + ": at offset ", StringComparison.Ordinal)) Assert.Fail($"message lacks the path and offset: {m}");
        if (e.Offset < 0 || e.Offset > fileLength) Assert.Fail($"offset {e.Offset} outside the {fileLength}-byte file: {m}");
        if (m.Length >= 400) Assert.Fail($"message is {m.Length} chars long: {m}");
    }

    private static ModelFormatException Fails(byte[] bytes, string? reasonContains = null)
    {
        var e = TryParse(bytes);
        Assert.That(e, Is.Not.Null, "a corrupt file loaded without error");
        Assert.That(e!.FilePath, Is.EqualTo(FakePath));
        if (reasonContains is not null) Assert.That(e.Reason, Does.Contain(reasonContains), e.Message);
        return e;
    }

    /// <summary>Raw little-endian GGUF bytes, for headers no writer would produce.</summary>
    private sealed class Raw
    {
        private readonly MemoryStream _ms = new();
        private readonly BinaryWriter _w;

        public Raw() => _w = new BinaryWriter(_ms);

        public static Raw Header(ulong tensorCount, ulong kvCount, uint version = 3) =>
            new Raw().U32(0x46554747).U32(version).U64(tensorCount).U64(kvCount);

        public long Position => _ms.Position;
        public Raw U8(byte v) { _w.Write(v); return this; }
        public Raw U32(uint v) { _w.Write(v); return this; }
        public Raw U64(ulong v) { _w.Write(v); return this; }
        public Raw Str(string s) { var b = Encoding.UTF8.GetBytes(s); return U64((ulong)b.Length).Bytes(b); }
        public Raw Bytes(byte[] b) { _w.Write(b); return this; }
        public Raw Key(string key, GgufValueType type) => Str(key).U32((uint)type);
        public Raw KvU32(string key, uint v) => Key(key, GgufValueType.UInt32).U32(v);
        public Raw KvStr(string key, string v) => Key(key, GgufValueType.String).Str(v);

        public Raw Tensor(string name, ulong[] dims, GgmlType type, ulong offset)
        {
            Str(name).U32((uint)dims.Length);
            foreach (var d in dims) U64(d);
            return U32((uint)type).U64(offset);
        }

        public Raw PadTo(int alignment, int extraBytes = 0)
        {
            while (_ms.Length % alignment != 0) U8(0);
            var rng = new Random(3);
            for (int i = 0; i < extraBytes; i++) U8((byte)rng.Next(1, 256));
            return this;
        }

        public byte[] ToArray()
        {
            _w.Flush();
            return _ms.ToArray();
        }
    }

    /// <summary>A file with one F32 tensor of <paramref name="dims"/> at <paramref name="offset"/> and 256 data bytes.</summary>
    private static byte[] OneTensor(ulong[] dims, GgmlType type = GgmlType.F32, ulong offset = 0, int dataBytes = 256) =>
        Raw.Header(1, 1).KvStr("general.architecture", "llama").Tensor("t", dims, type, offset).PadTo(32, dataBytes).ToArray();

    // ---- the valid baseline ----------------------------------------------------------------------------------------

    [Test]
    public void Baseline_ValidFilesLoad()
    {
        Assert.That(TryParse(ValidFile()), Is.Null);
        Assert.That(TryParse(ValidFile(64)), Is.Null);
        Assert.That(TryParse(OneTensor([64])), Is.Null);
        Assert.That(TryParse(Raw.Header(0, 0).ToArray()), Is.Null, "an empty GGUF is valid");
        Assert.That(TryParse(Raw.Header(0, 1, version: 2).KvU32("a", 1).ToArray()), Is.Null, "version 2 has the same layout");
    }

    // ---- truncation ------------------------------------------------------------------------------------------------

    [Test]
    public void Truncated_AtEveryHeaderOffset_AndInsideTheData()
    {
        var bytes = ValidFile();
        long dataStart, dataEnd;
        using (var f = GgufFile.OpenBuffer(bytes, FakePath))
        {
            dataStart = f.DataSectionOffset;
            dataEnd = f.Tensors.Max(t => t.DataOffset + t.ByteCount);
        }
        int checkedCount = 0;
        for (int length = 0; length < dataEnd; length += length < dataStart ? 1 : 7)
        {
            Fails(bytes[..length]);
            checkedCount++;
        }
        Fails(bytes[..(int)(dataEnd - 1)]);
        Assert.That(checkedCount, Is.GreaterThan((int)dataStart));
    }

    [Test]
    public void Truncated_RealFilesThroughTheFileSystem()
    {
        var dir = TestData.TempDir();
        try
        {
            var bytes = ValidFile();
            foreach (int length in new[] { 0, 3, 23, 24, 40, 200, bytes.Length - 40 })
            {
                var path = Path.Combine(dir, $"cut-{length}.gguf");
                File.WriteAllBytes(path, bytes[..length]);
                var e = Assert.Throws<ModelFormatException>(() => GgufFile.Open(path).Dispose())!;
                Assert.That(e.FilePath, Is.EqualTo(path));
                AssertWellFormed(e, length);
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Test]
    public void HugeSparseFiles_StringLongerThanAStringCanHold_AndCountsBeyondAList()
    {
        // NOTE: the file-size checks alone let a multi-GB file claim a 2^31-byte string or 2^31 tensors; sparse files make
        // that cheap to test (only the header page is ever written or read).
        var dir = TestData.TempDir();
        try
        {
            var stringPath = Path.Combine(dir, "long-string.gguf");
            var header = Raw.Header(0, 1).Key("k", GgufValueType.String).U64((1UL << 31) + 5).ToArray();
            WriteSparse(stringPath, header, (1L << 31) + 4096);
            var e = Assert.Throws<ModelFormatException>(() => GgufFile.Open(stringPath).Dispose())!;
            Assert.That(e.Reason, Does.Contain("limit"), e.Message);

            var countPath = Path.Combine(dir, "many-tensors.gguf");
            WriteSparse(countPath, Raw.Header(1UL << 26, 0).ToArray(), (1L << 26) * 40);
            e = Assert.Throws<ModelFormatException>(() => GgufFile.Open(countPath).Dispose())!;
            Assert.That(e.Reason, Does.Contain("limit"), e.Message);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static void WriteSparse(string path, byte[] header, long length)
    {
        using var fs = new FileStream(path, FileMode.CreateNew);
        fs.Write(header);
        fs.SetLength(length);
    }

    [Test]
    public void RealTestDataHeaders_TruncatedAtSampledOffsets()
    {
        var bytes = File.ReadAllBytes(TestData.Stories260K);
        for (int length = 0; length < 14176; length += 37) Fails(bytes[..length]);
        Fails(bytes[..(bytes.Length - 1)]);
    }

    // ---- fixed header fields ---------------------------------------------------------------------------------------

    [Test]
    public void BadMagic()
    {
        var bytes = ValidFile();
        bytes[0] = (byte)'g';
        Assert.That(Fails(bytes, "magic").Offset, Is.Zero);
        var ggml = ValidFile();
        "GGML"u8.CopyTo(ggml);
        Fails(ggml, "magic");
    }

    [TestCase(0u)]
    [TestCase(1u)]
    [TestCase(4u)]
    [TestCase(0x03000000u)] // version 3 written big-endian
    [TestCase(uint.MaxValue)]
    public void BadVersion(uint version)
    {
        var bytes = ValidFile();
        BitConverter.TryWriteBytes(bytes.AsSpan(4), version);
        Assert.That(Fails(bytes, "version").Offset, Is.EqualTo(4));
    }

    [Test]
    public void BigEndianVersion_IsNamed()
    {
        var bytes = ValidFile();
        BitConverter.TryWriteBytes(bytes.AsSpan(4), 0x03000000u);
        Fails(bytes, "big-endian");
    }

    [TestCase(ulong.MaxValue)]
    [TestCase(1UL << 62)]
    [TestCase(1UL << 32)]
    [TestCase(1000UL)]
    public void HugeTensorCount(ulong count)
    {
        var bytes = ValidFile();
        BitConverter.TryWriteBytes(bytes.AsSpan(8), count);
        Fails(bytes);
    }

    [TestCase(ulong.MaxValue)]
    [TestCase(1UL << 62)]
    [TestCase(1UL << 32)]
    [TestCase(1000UL)]
    public void HugeMetadataCount(ulong count)
    {
        var bytes = ValidFile();
        BitConverter.TryWriteBytes(bytes.AsSpan(16), count);
        Fails(bytes);
    }

    // ---- strings and arrays ----------------------------------------------------------------------------------------

    [TestCase(ulong.MaxValue)]
    [TestCase(1UL << 63)]
    [TestCase((ulong)int.MaxValue + 1)]
    [TestCase(1UL << 20)]
    public void HugeStringLengths(ulong length)
    {
        // Key length.
        Fails(Raw.Header(0, 1).U64(length).Bytes("abc"u8.ToArray()).U32(4).U32(1).ToArray());
        // String value length.
        Fails(Raw.Header(0, 1).Key("k", GgufValueType.String).U64(length).Bytes("abc"u8.ToArray()).ToArray());
        // String inside an array.
        Fails(Raw.Header(0, 1).Key("k", GgufValueType.Array).U32((uint)GgufValueType.String).U64(1).U64(length).ToArray());
        // Tensor name length.
        Fails(Raw.Header(1, 0).U64(length).Bytes("t"u8.ToArray()).U32(1).U64(32).U32(0).U64(0).PadTo(32, 128).ToArray());
    }

    [TestCase(GgufValueType.UInt8, ulong.MaxValue)]
    [TestCase(GgufValueType.Int32, 1UL << 62)]
    [TestCase(GgufValueType.Float64, 1UL << 61)]
    [TestCase(GgufValueType.Bool, (ulong)int.MaxValue + 1)]
    [TestCase(GgufValueType.String, 1UL << 40)]
    [TestCase(GgufValueType.Array, ulong.MaxValue)]
    [TestCase(GgufValueType.UInt16, 1000UL)]
    public void HugeArrayCounts(GgufValueType elementType, ulong count)
    {
        var raw = Raw.Header(0, 1).Key("a", GgufValueType.Array).U32((uint)elementType).U64(count);
        for (int i = 0; i < 16; i++) raw.U64(0); // some bytes, far fewer than the count needs
        Fails(raw.ToArray(), "array count");
    }

    [Test]
    public void BoolOtherThanZeroOrOne()
    {
        Fails(Raw.Header(0, 1).Key("b", GgufValueType.Bool).U8(2).ToArray(), "bool");
        Fails(Raw.Header(0, 1).Key("b", GgufValueType.Array).U32((uint)GgufValueType.Bool).U64(2).U8(1).U8(255).ToArray(), "bool");
    }

    [TestCase(13u)]
    [TestCase(0xFFFFFFFFu)]
    [TestCase(0x80000008u)]
    public void UnknownValueType(uint type)
    {
        Fails(Raw.Header(0, 1).Str("k").U32(type).U64(0).ToArray(), "type");
        Fails(Raw.Header(0, 1).Key("k", GgufValueType.Array).U32(type).U64(0).ToArray(), "element type");
    }

    [Test]
    public void ArraysNestedTooDeep()
    {
        var raw = Raw.Header(0, 1).Key("k", GgufValueType.Array);
        for (int i = 0; i < 64; i++) raw.U32((uint)GgufValueType.Array).U64(1);
        raw.U32((uint)GgufValueType.UInt8).U64(0);
        Fails(raw.ToArray(), "nested");
    }

    [Test]
    public void EmptyAndDuplicateKeys()
    {
        Fails(Raw.Header(0, 1).KvU32("", 1).ToArray(), "empty");
        var e = Fails(Raw.Header(0, 2).KvU32("llama.block_count", 1).KvU32("llama.block_count", 2).ToArray(), "duplicate");
        Assert.That(e.Offset, Is.EqualTo(24 + 8 + 17 + 4 + 4), "points at the second key");
    }

    [Test]
    public void NamesWithControlCharacters_StayOnOneLine()
    {
        var e = Fails(Raw.Header(0, 2).KvU32("bad\nkey\r\u0085", 1).KvU32("bad\nkey\r\u0085", 1).ToArray(), "duplicate");
        Assert.That(e.Reason, Does.Contain("\\u000A"));
        var longName = new string('n', 5000);
        var e2 = Fails(Raw.Header(0, 2).KvU32(longName, 1).KvU32(longName, 1).ToArray(), "duplicate");
        Assert.That(e2.Message.Length, Is.LessThan(300));
    }

    // ---- tensor infos ----------------------------------------------------------------------------------------------

    [Test]
    public void ZeroOrTooManyDimensions()
    {
        Fails(OneTensor([]), "dimensions");
        Fails(OneTensor([2, 2, 2, 2, 2]), "dimensions");
        Fails(Raw.Header(1, 0).Str("t").U32(uint.MaxValue).U64(1).PadTo(32, 64).ToArray(), "dimensions");
    }

    [TestCase(new ulong[] { 0 })]
    [TestCase(new ulong[] { 32, 0 })]
    [TestCase(new ulong[] { ulong.MaxValue })]
    [TestCase(new ulong[] { 1UL << 63 })]
    [TestCase(new ulong[] { 1UL << 32, 1UL << 32 })]
    [TestCase(new ulong[] { 1UL << 31, 1UL << 31, 1UL << 31, 1UL << 31 })]
    [TestCase(new ulong[] { 1UL << 62, 4 })]
    [TestCase(new ulong[] { 1UL << 61, 2 })] // element count fits in long, byte count (x4) does not
    [TestCase(new ulong[] { 1UL << 40 })]    // fits in long, far beyond the file
    public void BadOrOverflowingDimensions(ulong[] dims) => Fails(OneTensor(dims));

    [TestCase(4u)]   // Q4_2, removed from ggml
    [TestCase(5u)]   // Q4_3, removed from ggml
    [TestCase(31u)]
    [TestCase(99u)]
    [TestCase(uint.MaxValue)]
    public void UnknownTensorType(uint type) => Fails(OneTensor([32], (GgmlType)type), "type");

    [Test]
    public void RowLengthNotAMultipleOfTheBlock() => Fails(OneTensor([48], GgmlType.Q8_0), "block");

    [TestCase(4UL)]
    [TestCase(33UL)]
    public void MisalignedTensorOffset(ulong offset) => Fails(OneTensor([8], offset: offset), "alignment");

    [TestCase(256UL)]             // starts at the end of the data
    [TestCase(224UL + 32)]        // 32 floats from 256: past the end
    [TestCase(1UL << 40)]
    [TestCase(ulong.MaxValue - 31)] // aligned, and offset + data start overflows
    public void TensorOutsideTheFile(ulong offset) => Fails(OneTensor([32], offset: offset), "outside the file");

    [Test]
    public void OverlappingTensors()
    {
        var bytes = Raw.Header(2, 0)
            .Tensor("a", [32], GgmlType.F32, 0)
            .Tensor("b", [32], GgmlType.F32, 96) // a covers [0, 128)
            .PadTo(32, 256).ToArray();
        Fails(bytes, "overlaps");
        var same = Raw.Header(2, 0).Tensor("a", [8], GgmlType.F32, 0).Tensor("b", [8], GgmlType.F32, 0).PadTo(32, 64).ToArray();
        Fails(same, "overlaps");
    }

    [Test]
    public void DuplicateTensorNames()
    {
        var bytes = Raw.Header(2, 0).Tensor("w", [8], GgmlType.F32, 0).Tensor("w", [8], GgmlType.F32, 32).PadTo(32, 64).ToArray();
        Fails(bytes, "duplicate tensor");
    }

    // ---- alignment -------------------------------------------------------------------------------------------------

    [TestCase(0u)]
    [TestCase(3u)]
    [TestCase(48u)]
    [TestCase(1u << 17)]
    [TestCase(0x80000000u)]
    [TestCase(uint.MaxValue)]
    public void BadAlignmentValues(uint alignment)
    {
        var bytes = Raw.Header(1, 1).KvU32("general.alignment", alignment).Tensor("t", [8], GgmlType.F32, 0).PadTo(64, 64).ToArray();
        Fails(bytes, "alignment");
    }

    [Test]
    public void AlignmentOfTheWrongType()
    {
        Fails(Raw.Header(0, 1).Key("general.alignment", GgufValueType.UInt64).U64(32).ToArray(), "alignment");
        Fails(Raw.Header(0, 1).KvStr("general.alignment", "32").ToArray(), "alignment");
    }

    [Test]
    public void TensorAlignedTo32ButNotToTheDeclared64()
    {
        var bytes = Raw.Header(2, 1).KvU32("general.alignment", 64)
            .Tensor("a", [8], GgmlType.F32, 0).Tensor("b", [8], GgmlType.F32, 32).PadTo(64, 128).ToArray();
        Fails(bytes, "alignment");
    }

    // ---- mutations -------------------------------------------------------------------------------------------------

    [Test]
    public void Mutations_EitherLoadOrThrowModelFormatException()
    {
        // NOTE: fixed seed, so a failure reproduces; the fuzz harness (fuzz/Inference.Fuzz) explores further.
        var rng = new Random(20261126);
        var bases = new[] { ValidFile(), ValidFile(64), OneTensor([32, 2]) };
        ulong[] hugeU64 = [ulong.MaxValue, 1UL << 63, 1UL << 62, 1UL << 32, (ulong)int.MaxValue, (ulong)int.MaxValue + 1, 0];
        uint[] interestingU32 = [0, 1, 3, 4, 5, 9, 12, 13, 31, 64, 0x80000000u, uint.MaxValue];
        var u64Fields = bases.Select(U64FieldOffsets).ToArray();
        Assert.That(u64Fields[0], Has.Count.GreaterThan(20));
        int loaded = 0, rejected = 0;
        const int iterations = 12_000;
        for (int n = 0; n < iterations; n++)
        {
            var data = new List<byte>(bases[n % bases.Length]);
            int mutations = rng.Next(1, 5);
            for (int m = 0; m < mutations && data.Count > 0; m++)
            {
                int at = rng.Next(data.Count);
                switch (rng.Next(7))
                {
                    case 0: data[at] ^= (byte)(1 << rng.Next(8)); break;
                    case 1: data[at] = (byte)rng.Next(256); break;
                    case 2:
                        var ins = new byte[rng.Next(1, 9)];
                        rng.NextBytes(ins);
                        data.InsertRange(at, ins);
                        break;
                    case 3: data.RemoveRange(at, Math.Min(rng.Next(1, 9), data.Count - at)); break;
                    case 4:
                        // Half of the time a real u64 field of the header (a length, count, dimension or offset).
                        var fields = u64Fields[n % bases.Length];
                        if (rng.Next(2) == 0) at = fields[rng.Next(fields.Count)];
                        if (at + 8 <= data.Count)
                        {
                            var v = BitConverter.GetBytes(hugeU64[rng.Next(hugeU64.Length)]);
                            for (int i = 0; i < 8; i++) data[at + i] = v[i];
                        }
                        break;
                    case 5:
                        if (at + 4 <= data.Count)
                        {
                            var v = BitConverter.GetBytes(interestingU32[rng.Next(interestingU32.Length)]);
                            for (int i = 0; i < 4; i++) data[at + i] = v[i];
                        }
                        break;
                    default: data.RemoveRange(at, data.Count - at); break;
                }
            }
            var bytes = data.ToArray();
            if (TryParse(bytes) is null) loaded++;
            else rejected++;
        }
        TestContext.Out.WriteLine($"{iterations} mutants: {loaded} loaded, {rejected} rejected with ModelFormatException");
        Assert.That(loaded, Is.GreaterThan(0), "some mutants (e.g. changed tensor bytes) must still load");
        Assert.That(rejected, Is.GreaterThan(iterations / 4));
    }

    /// <summary>Offsets of every u64 field (counts, string lengths, array counts, dimensions, tensor offsets) of a valid header.</summary>
    private static List<int> U64FieldOffsets(byte[] file)
    {
        var offsets = new List<int> { 8, 16 };
        int pos = 24;
        ulong U64() { ulong v = BitConverter.ToUInt64(file, pos); offsets.Add(pos); pos += 8; return v; }
        uint U32() { uint v = BitConverter.ToUInt32(file, pos); pos += 4; return v; }
        void Str()
        {
            int length = (int)U64();
            pos += length;
        }
        void Value(GgufValueType t)
        {
            switch (t)
            {
                case GgufValueType.UInt8 or GgufValueType.Int8 or GgufValueType.Bool: pos += 1; break;
                case GgufValueType.UInt16 or GgufValueType.Int16: pos += 2; break;
                case GgufValueType.UInt32 or GgufValueType.Int32 or GgufValueType.Float32: pos += 4; break;
                case GgufValueType.UInt64 or GgufValueType.Int64 or GgufValueType.Float64: U64(); break;
                case GgufValueType.String: Str(); break;
                case GgufValueType.Array:
                    var et = (GgufValueType)U32();
                    ulong count = U64();
                    for (ulong i = 0; i < count; i++) Value(et);
                    break;
            }
        }
        ulong tensors = BitConverter.ToUInt64(file, 8), kvs = BitConverter.ToUInt64(file, 16);
        for (ulong i = 0; i < kvs; i++)
        {
            Str();
            Value((GgufValueType)U32());
        }
        for (ulong i = 0; i < tensors; i++)
        {
            Str();
            uint dims = U32();
            for (uint d = 0; d < dims; d++) U64();
            U32();
            U64();
        }
        return offsets;
    }
}
