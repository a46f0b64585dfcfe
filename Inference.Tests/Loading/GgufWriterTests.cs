using Inference.Loading;
using Inference.Tests.Support;

namespace Inference.Tests.Loading;

public class GgufWriterTests
{
    private string _dir = "";

    [SetUp]
    public void SetUp() => _dir = TestData.TempDir();

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    private static void AddEveryValueType(GgufWriter w)
    {
        w.AddUInt8("t.u8", 250);
        w.AddInt8("t.i8", -120);
        w.AddUInt16("t.u16", 65000);
        w.AddInt16("t.i16", -32000);
        w.AddUInt32("t.u32", 4_000_000_000);
        w.AddInt32("t.i32", -2_000_000_000);
        w.AddUInt64("t.u64", ulong.MaxValue - 7);
        w.AddInt64("t.i64", long.MinValue + 9);
        w.AddFloat32("t.f32", 1e-5f);
        w.AddFloat64("t.f64", Math.PI);
        w.AddBool("t.true", true);
        w.AddBool("t.false", false);
        w.AddString("t.str", "héllo ✓ wörld");
        w.AddString("t.empty", "");
        w.AddStringArray("t.strs", ["<unk>", "", "▁the", "日本"]);
        w.AddStringArray("t.strs0", []);
        w.AddArray<byte>("t.a.u8", [1, 2, 255]);
        w.AddArray<sbyte>("t.a.i8", [-1, 2, -128]);
        w.AddArray<ushort>("t.a.u16", [1, 65535]);
        w.AddArray<short>("t.a.i16", [-1, short.MinValue]);
        w.AddArray<uint>("t.a.u32", [uint.MaxValue, 0]);
        w.AddArray<int>("t.a.i32", [-5, 6, 7]);
        w.AddArray<ulong>("t.a.u64", [ulong.MaxValue]);
        w.AddArray<long>("t.a.i64", [long.MinValue, 3]);
        w.AddArray<float>("t.a.f32", [0.5f, -1.25f, float.Epsilon]);
        w.AddArray<double>("t.a.f64", [1e300, -0.0]);
        w.AddArray<bool>("t.a.bool", [true, false, true]);
    }

    private static void AssertEveryValueType(GgufFile f)
    {
        Assert.That(f.Metadata["t.u8"].Value, Is.EqualTo((byte)250));
        Assert.That(f.Metadata["t.i8"].Value, Is.EqualTo((sbyte)-120));
        Assert.That(f.Metadata["t.u16"].Value, Is.EqualTo((ushort)65000));
        Assert.That(f.Metadata["t.i16"].Value, Is.EqualTo((short)-32000));
        Assert.That(f.Metadata["t.u32"].Value, Is.EqualTo(4_000_000_000u));
        Assert.That(f.Metadata["t.i32"].Value, Is.EqualTo(-2_000_000_000));
        Assert.That(f.Metadata["t.u64"].Value, Is.EqualTo(ulong.MaxValue - 7));
        Assert.That(f.Metadata["t.i64"].Value, Is.EqualTo(long.MinValue + 9));
        Assert.That(f.Metadata["t.f32"].Value, Is.EqualTo(1e-5f));
        Assert.That(f.Metadata["t.f64"].Value, Is.EqualTo(Math.PI));
        Assert.That(f.GetBool("t.true"), Is.True);
        Assert.That(f.GetBool("t.false"), Is.False);
        Assert.That(f.GetString("t.str"), Is.EqualTo("héllo ✓ wörld"));
        Assert.That(f.GetString("t.empty"), Is.EqualTo(""));
        Assert.That(f.GetArray<string>("t.strs"), Is.EqualTo(new[] { "<unk>", "", "▁the", "日本" }));
        Assert.That(f.GetArray<string>("t.strs0"), Is.Empty);
        Assert.That(f.GetArray<byte>("t.a.u8"), Is.EqualTo(new byte[] { 1, 2, 255 }));
        Assert.That(f.GetArray<sbyte>("t.a.i8"), Is.EqualTo(new sbyte[] { -1, 2, -128 }));
        Assert.That(f.GetArray<ushort>("t.a.u16"), Is.EqualTo(new ushort[] { 1, 65535 }));
        Assert.That(f.GetArray<short>("t.a.i16"), Is.EqualTo(new short[] { -1, short.MinValue }));
        Assert.That(f.GetArray<uint>("t.a.u32"), Is.EqualTo(new[] { uint.MaxValue, 0u }));
        Assert.That(f.GetArray<int>("t.a.i32"), Is.EqualTo(new[] { -5, 6, 7 }));
        Assert.That(f.GetArray<ulong>("t.a.u64"), Is.EqualTo(new[] { ulong.MaxValue }));
        Assert.That(f.GetArray<long>("t.a.i64"), Is.EqualTo(new[] { long.MinValue, 3L }));
        Assert.That(f.GetArray<float>("t.a.f32"), Is.EqualTo(new[] { 0.5f, -1.25f, float.Epsilon }));
        var f64 = f.GetArray<double>("t.a.f64")!;
        Assert.That(f64[0], Is.EqualTo(1e300));
        Assert.That(BitConverter.DoubleToInt64Bits(f64[1]), Is.EqualTo(BitConverter.DoubleToInt64Bits(-0.0)));
        Assert.That(f.GetArray<bool>("t.a.bool"), Is.EqualTo(new[] { true, false, true }));
    }

    private static readonly (string Name, long[] Dims, GgmlType Type)[] SampleTensors =
    [
        ("a.f32", [7, 3], GgmlType.F32),        // 84 bytes: not a multiple of 32 or 64, so padding is exercised
        ("b.f16", [5], GgmlType.F16),
        ("c.q8_0", [64, 3], GgmlType.Q8_0),
        ("d.q4_k", [256, 2], GgmlType.Q4_K),
        ("e.i32", [3, 2, 2, 1], GgmlType.I32),
        ("f.bf16", [9, 1, 2], GgmlType.BF16),
    ];

    [TestCase(32u)]
    [TestCase(64u)]
    public void RoundTrip_EveryValueType_AndTensorTypes(uint alignment)
    {
        var path = Path.Combine(_dir, "rt.gguf");
        var rng = new Random(1234);
        var payloads = new List<byte[]>();
        using (var w = GgufWriter.Create(path, new GgufWriterOptions { Alignment = alignment }))
        {
            AddEveryValueType(w);
            foreach (var (name, dims, type) in SampleTensors)
            {
                var bytes = new byte[w.AddTensorInfo(name, dims, type)];
                rng.NextBytes(bytes);
                payloads.Add(bytes);
            }
            w.WriteHeader();
            for (int i = 0; i < SampleTensors.Length; i++)
            {
                // Chunked writes: first byte, then the rest.
                w.WriteTensorData(SampleTensors[i].Name, payloads[i].AsSpan(0, 1));
                w.WriteTensorData(SampleTensors[i].Name, payloads[i].AsSpan(1));
            }
            w.Complete();
        }

        using var f = GgufFile.Open(path);
        Assert.That(f.Version, Is.EqualTo(3u));
        Assert.That(f.Alignment, Is.EqualTo(alignment));
        Assert.That(f.DataSectionOffset % alignment, Is.Zero);
        Assert.That(f.Metadata.ContainsKey("general.alignment"), Is.EqualTo(alignment != 32));
        AssertEveryValueType(f);
        Assert.That(f.Tensors, Has.Count.EqualTo(SampleTensors.Length));
        for (int i = 0; i < SampleTensors.Length; i++)
        {
            var t = f.Tensors[i];
            Assert.That(t.Name, Is.EqualTo(SampleTensors[i].Name));
            Assert.That(t.Dimensions, Is.EqualTo(SampleTensors[i].Dims));
            Assert.That(t.Type, Is.EqualTo(SampleTensors[i].Type));
            Assert.That((t.DataOffset - f.DataSectionOffset) % alignment, Is.Zero, t.Name);
            Assert.That(f.GetTensorBytes(t).ToArray(), Is.EqualTo(payloads[i]), t.Name);
        }
        Assert.That(f.FileLength % alignment, Is.Zero, "the last tensor is padded to the alignment");
    }

    [Test]
    public void RoundTrip_KeyOrderIsPreserved_AndAlignmentKeyCanBeForced()
    {
        var path = Path.Combine(_dir, "order.gguf");
        using (var w = GgufWriter.Create(path, new GgufWriterOptions { AlignmentKey = AlignmentKeyMode.Always }))
        {
            w.AddString("z", "1");
            w.AddString("a", "2");
            w.AddString("m", "3");
            w.Complete();
        }
        using var f = GgufFile.Open(path);
        Assert.That(f.MetadataKeys, Is.EqualTo(new[] { "general.alignment", "z", "a", "m" }));
        Assert.That(f.Alignment, Is.EqualTo(32u));
        Assert.That(f.Tensors, Is.Empty);
    }

    [Test]
    public void CopiesEveryKeyOfARealFile_ByteForByteHeader()
    {
        // Re-writing stories260K's metadata and tensors through the writer must reproduce the file exactly.
        var src = TestData.Stories260K;
        var path = Path.Combine(_dir, "copy.gguf");
        using (var f = GgufFile.Open(src))
        using (var w = GgufWriter.Create(path))
        {
            foreach (var key in f.MetadataKeys) w.AddValue(key, f.Metadata[key]);
            foreach (var t in f.Tensors) w.AddTensorInfo(t.Name, t.Dimensions, t.Type);
            w.WriteHeader();
            foreach (var t in f.Tensors) w.WriteTensorData(t.Name, f.GetTensorBytes(t));
            w.Complete();
        }
        Assert.That(File.ReadAllBytes(path), Is.EqualTo(File.ReadAllBytes(src)));
    }

    [TestCase(64u)]
    [TestCase(256u)]
    public void RewrittenWithOtherAlignment_LlamaCppStillGeneratesTheSameText(uint alignment)
    {
        // llama.cpp reads general.alignment and the tensor offsets on its own: a wrong padding would scramble the weights.
        var path = Path.Combine(_dir, $"stories-a{alignment}.gguf");
        using (var f = GgufFile.Open(TestData.Stories260K))
        using (var w = GgufWriter.Create(path, new GgufWriterOptions { Alignment = alignment }))
        {
            foreach (var key in f.MetadataKeys) w.AddValue(key, f.Metadata[key]);
            foreach (var t in f.Tensors) w.AddTensorInfo(t.Name, t.Dimensions, t.Type);
            w.WriteHeader();
            foreach (var t in f.Tensors) w.WriteTensorData(t.Name, f.GetTensorBytes(t));
            w.Complete();
        }
        using var model = LlamaCpp.Load(path);
        int[] expected = [403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338]; // expected/stories260K-greedy-200.json
        Assert.That(model.GenerateGreedy([1], expected.Length), Is.EqualTo(expected));
    }

    [Test]
    public void NestedArrays_RoundTrip()
    {
        var path = Path.Combine(_dir, "nested.gguf");
        // Hand-encode an array of arrays: [[1,2],[3]] of int32, appended as a second file's only key.
        using (var ms = new MemoryStream())
        {
            var bw = new BinaryWriter(ms);
            bw.Write(0x46554747u); bw.Write(3u); bw.Write(0UL); bw.Write(1UL);
            bw.Write(6UL); bw.Write("nested"u8.ToArray());
            bw.Write((uint)GgufValueType.Array); bw.Write((uint)GgufValueType.Array); bw.Write(2UL);
            bw.Write((uint)GgufValueType.Int32); bw.Write(2UL); bw.Write(1); bw.Write(2);
            bw.Write((uint)GgufValueType.Int32); bw.Write(1UL); bw.Write(3);
            bw.Flush();
            File.WriteAllBytes(path, ms.ToArray());
        }
        var copy = Path.Combine(_dir, "copy.gguf");
        using (var f = GgufFile.Open(path))
        using (var w = GgufWriter.Create(copy))
        {
            w.AddValue("nested", f.Metadata["nested"]);
            w.Complete();
        }
        Assert.That(File.ReadAllBytes(copy), Is.EqualTo(File.ReadAllBytes(path)));
    }

    [Test]
    public void RandomFiles_RoundTrip()
    {
        // Seeded random metadata of every type and random tensors (types, shapes, alignments), written and read back.
        var rng = new Random(42);
        GgmlType[] types = [GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q4_0, GgmlType.Q8_0, GgmlType.Q4_K, GgmlType.Q6_K, GgmlType.I8, GgmlType.F64];
        for (int file = 0; file < 150; file++)
        {
            uint alignment = 1u << rng.Next(0, 9);
            var expectedMeta = new Dictionary<string, object>();
            var tensors = new List<(string Name, long[] Dims, GgmlType Type, byte[] Data)>();
            using var ms = new MemoryStream();
            using (var w = new GgufWriter(ms, new GgufWriterOptions { Alignment = alignment }))
            {
                int keys = rng.Next(0, 12);
                for (int k = 0; k < keys; k++)
                {
                    string key = $"k{k}.{RandomString(rng, 6)}";
                    object v;
                    switch (rng.Next(14))
                    {
                        case 0: { var x = (byte)rng.Next(256); w.AddUInt8(key, x); v = x; break; }
                        case 1: { var x = (sbyte)rng.Next(-128, 128); w.AddInt8(key, x); v = x; break; }
                        case 2: { var x = (ushort)rng.Next(65536); w.AddUInt16(key, x); v = x; break; }
                        case 3: { var x = (short)rng.Next(-32768, 32768); w.AddInt16(key, x); v = x; break; }
                        case 4: { var x = (uint)rng.NextInt64(0, 1L << 32); w.AddUInt32(key, x); v = x; break; }
                        case 5: { var x = rng.Next(int.MinValue, int.MaxValue); w.AddInt32(key, x); v = x; break; }
                        case 6: { var x = (ulong)rng.NextInt64() * 3; w.AddUInt64(key, x); v = x; break; }
                        case 7: { var x = -rng.NextInt64(); w.AddInt64(key, x); v = x; break; }
                        case 8: { var x = (float)rng.NextDouble() - 0.5f; w.AddFloat32(key, x); v = x; break; }
                        case 9: { var x = rng.NextDouble() * 1e10; w.AddFloat64(key, x); v = x; break; }
                        case 10: { var x = rng.Next(2) == 1; w.AddBool(key, x); v = x; break; }
                        case 11: { var x = RandomString(rng, rng.Next(0, 40)); w.AddString(key, x); v = x; break; }
                        case 12:
                            var strs = Enumerable.Range(0, rng.Next(0, 20)).Select(_ => RandomString(rng, rng.Next(0, 10))).ToArray();
                            w.AddStringArray(key, strs);
                            v = strs;
                            break;
                        default:
                            var ints = Enumerable.Range(0, rng.Next(0, 50)).Select(_ => rng.Next(int.MinValue, int.MaxValue)).ToArray();
                            w.AddArray<int>(key, ints);
                            v = ints;
                            break;
                    }
                    expectedMeta[key] = v;
                }
                int tensorCount = rng.Next(0, 6);
                for (int t = 0; t < tensorCount; t++)
                {
                    var type = types[rng.Next(types.Length)];
                    int block = GgmlTypeInfo.BlockElements(type);
                    long[] dims = Enumerable.Range(0, rng.Next(1, 5)).Select(d => (long)(d == 0 ? block * rng.Next(1, 3) : rng.Next(1, 4))).ToArray();
                    var data = new byte[w.AddTensorInfo($"t{t}", dims, type)];
                    rng.NextBytes(data);
                    tensors.Add(($"t{t}", dims, type, data));
                }
                w.WriteHeader();
                foreach (var t in tensors) w.WriteTensorData(t.Name, t.Data);
                w.Complete();
            }

            using var f = GgufFile.OpenBuffer(ms.ToArray(), $"random-{file}.gguf");
            Assert.That(f.Alignment, Is.EqualTo(alignment), $"file {file}");
            Assert.That(f.MetadataKeys.Where(k => k != "general.alignment"), Is.EqualTo(expectedMeta.Keys), $"file {file}");
            foreach (var (key, v) in expectedMeta)
            {
                var value = f.Metadata[key].Value;
                Assert.That(value.GetType(), Is.EqualTo(v.GetType()), key);
                Assert.That(value, Is.EqualTo(v), key);
            }
            Assert.That(f.Tensors, Has.Count.EqualTo(tensors.Count));
            for (int i = 0; i < tensors.Count; i++)
            {
                Assert.That(f.Tensors[i].Dimensions, Is.EqualTo(tensors[i].Dims));
                Assert.That(f.Tensors[i].Type, Is.EqualTo(tensors[i].Type));
                Assert.That(f.GetTensorBytes(f.Tensors[i]).SequenceEqual(tensors[i].Data), Is.True, $"file {file} tensor {i}");
            }
        }
    }

    private static string RandomString(Random rng, int length)
    {
        const string chars = "abcXYZ019 ._-▁éß日本\n\t";
        var c = new char[length];
        for (int i = 0; i < length; i++) c[i] = chars[rng.Next(chars.Length)];
        return new string(c);
    }

    [Test]
    public void Misuse_IsRejectedWithExceptions()
    {
        using var ms = new MemoryStream();
        using var w = new GgufWriter(ms);
        w.AddString("k", "v");
        Assert.Throws<ArgumentException>(() => w.AddString("k", "again"));
        Assert.Throws<ArgumentException>(() => w.AddUInt32("general.alignment", 64));
        Assert.Throws<ArgumentException>(() => w.AddTensorInfo("t", [], GgmlType.F32));
        Assert.Throws<ArgumentException>(() => w.AddTensorInfo("t", [1, 1, 1, 1, 1], GgmlType.F32));
        Assert.Throws<ArgumentOutOfRangeException>(() => w.AddTensorInfo("t", [0], GgmlType.F32));
        Assert.Throws<ArgumentException>(() => w.AddTensorInfo("t", [31], GgmlType.Q8_0));
        Assert.Throws<ArgumentOutOfRangeException>(() => w.AddTensorInfo("t", [4], (GgmlType)99));
        Assert.Throws<ArgumentException>(() => w.AddTensorInfo(new string('x', 64), [4], GgmlType.F32));
        Assert.Throws<ArgumentException>(() => w.AddArray<char>("c", ['a']));
        w.AddTensorInfo("t1", [4], GgmlType.F32);
        w.AddTensorInfo("t2", [4], GgmlType.F32);
        Assert.Throws<ArgumentException>(() => w.AddTensorInfo("t1", [4], GgmlType.F32));
        Assert.Throws<InvalidOperationException>(() => w.WriteTensorData("t1", new byte[16]));
        w.WriteHeader();
        Assert.Throws<InvalidOperationException>(() => w.AddString("late", "x"));
        Assert.Throws<InvalidOperationException>(() => w.WriteTensorData("t2", new byte[16]));
        Assert.Throws<ArgumentException>(() => w.WriteTensorData("t1", new byte[17]));
        w.WriteTensorData("t1", new byte[16]);
        Assert.Throws<InvalidOperationException>(() => w.Complete());
        w.WriteTensorData("t2", new float[4]);
        w.Complete();
        Assert.That(ms.Length % 32, Is.Zero);
    }

    [TestCase(0u)]
    [TestCase(3u)]
    [TestCase(48u)]
    [TestCase(1u << 17)]
    public void Options_RejectBadAlignment(uint alignment) =>
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new GgufWriterOptions { Alignment = alignment });
}
