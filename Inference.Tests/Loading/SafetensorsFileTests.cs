using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using Inference.Loading;
using Inference.Tests.Support;

namespace Inference.Tests.Loading;

public class SafetensorsFileTests
{
    private static float[] RandomValues(int count, int seed)
    {
        var rng = new Random(seed);
        var v = new float[count];
        for (int i = 0; i < count; i++) v[i] = (float)(rng.NextDouble() * 8 - 4);
        return v;
    }

    /// <summary>A raw file image: u64 header length, the header text as given, then <paramref name="dataBytes"/> bytes of data.</summary>
    private static byte[] Image(string header, int dataBytes, ulong? lengthOverride = null)
    {
        var json = Encoding.UTF8.GetBytes(header);
        var image = new byte[8 + json.Length + dataBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(image, lengthOverride ?? (ulong)json.Length);
        json.CopyTo(image, 8);
        for (int i = 8 + json.Length; i < image.Length; i++) image[i] = (byte)(i * 7);
        return image;
    }

    private static ModelFormatException Corrupt(byte[] image) =>
        Assert.Throws<ModelFormatException>(() => SafetensorsFile.OpenBuffer(image, "test.safetensors").Dispose())!;

    [Test]
    public void RoundTrip_AllDTypes_ThroughFile()
    {
        string dir = TestData.TempDir();
        try
        {
            string path = Path.Combine(dir, "model.safetensors");
            var a = RandomValues(6 * 5, 1);
            var b = RandomValues(7, 2);
            var c = RandomValues(3 * 4 * 2, 3);
            using (var w = SafetensorsWriter.Create(path))
            {
                w.AddMetadata("format", "pt");
                w.AddTensor("a", SafetensorsDType.F32, [6, 5]);
                w.AddTensor("b", SafetensorsDType.F16, [7]);
                w.AddTensor("c", SafetensorsDType.BF16, [3, 4, 2]);
                w.AddTensor("scalar", SafetensorsDType.F32, []);
                w.AddTensor("empty", SafetensorsDType.F32, [0, 4]);
                w.WriteHeader();
                w.WriteTensorData("a", a.AsSpan(0, 11));
                w.WriteTensorData("a", a.AsSpan(11));
                w.WriteTensorData("b", b);
                w.WriteTensorData("c", c);
                w.WriteTensorData("scalar", [42.5f]);
                w.Complete();
            }

            using var f = SafetensorsFile.Open(path);
            Assert.That(f.DataSectionOffset % 8, Is.EqualTo(0));
            Assert.That(f.Metadata["format"], Is.EqualTo("pt"));
            Assert.That(f.Tensors.Select(t => t.Name), Is.EqualTo(new[] { "a", "b", "c", "scalar", "empty" }));

            var ta = f.GetTensor("a");
            Assert.That(ta.DType, Is.EqualTo(SafetensorsDType.F32));
            Assert.That(ta.Shape, Is.EqualTo(new long[] { 6, 5 }));
            Assert.That(MemoryMarshal.Cast<byte, float>(f.GetTensorBytes(ta)).ToArray(), Is.EqualTo(a));

            var tb = f.GetTensor("b");
            var halves = MemoryMarshal.Cast<byte, Half>(f.GetTensorBytes(tb)).ToArray();
            for (int i = 0; i < b.Length; i++) Assert.That((float)halves[i], Is.EqualTo((float)(Half)b[i]));

            var tc = f.GetTensor("c");
            Assert.That(tc.ElementCount, Is.EqualTo(24));
            var bf = MemoryMarshal.Cast<byte, ushort>(f.GetTensorBytes(tc)).ToArray();
            for (int i = 0; i < c.Length; i++)
            {
                float back = SafetensorsWriter.FromBFloat16(bf[i]);
                Assert.That(back, Is.EqualTo(c[i]).Within(Math.Abs(c[i]) / 128 + 1e-30), $"bf16 element {i}");
            }

            Assert.That(MemoryMarshal.Cast<byte, float>(f.GetTensorBytes(f.GetTensor("scalar")))[0], Is.EqualTo(42.5f));
            Assert.That(f.GetTensor("empty").ByteCount, Is.EqualTo(0));
            Assert.That(f.FindTensor("missing"), Is.Null);
            Assert.Throws<ModelFormatException>(() => f.GetTensor("missing"));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Test]
    public void Writer_RefusesMisuse()
    {
        using var stream = new MemoryStream();
        using var w = new SafetensorsWriter(stream);
        w.AddTensor("a", SafetensorsDType.F32, [2]);
        w.AddTensor("b", SafetensorsDType.F16, [2]);
        Assert.Throws<ArgumentException>(() => w.AddTensor("a", SafetensorsDType.F32, [1]), "duplicate name");
        Assert.Throws<ArgumentException>(() => w.AddTensor("__metadata__", SafetensorsDType.F32, [1]), "reserved name");
        Assert.Throws<ArgumentOutOfRangeException>(() => w.AddTensor("c", SafetensorsDType.F32, [-1]));
        Assert.Throws<InvalidOperationException>(() => w.WriteTensorData("a", new byte[8]), "data before the header");
        w.WriteHeader();
        Assert.Throws<InvalidOperationException>(() => w.AddTensor("c", SafetensorsDType.F32, [1]), "declaring after the header");
        Assert.Throws<InvalidOperationException>(() => w.WriteTensorData("b", new byte[4]), "out of order");
        Assert.Throws<ArgumentException>(() => w.WriteTensorData("a", new byte[12]), "too many bytes");
        w.WriteTensorData("a", [1f, 2f]);
        Assert.Throws<InvalidOperationException>(() => w.Complete(), "b not written");
        w.WriteTensorData("b", [3f, 4f]);
        w.Complete();
        using var f = SafetensorsFile.OpenBuffer(stream.ToArray(), "mem");
        Assert.That(f.Tensors.Select(t => t.ByteCount), Is.EqualTo(new long[] { 8, 4 }));
    }

    [Test]
    public void BFloat16_RoundsToNearestEven()
    {
        Assert.That(SafetensorsWriter.ToBFloat16(1f), Is.EqualTo(0x3F80));
        // 1 + 2^-8 lies exactly between two bf16 values (1 and 1 + 2^-7): ties go to the even mantissa, 1.
        Assert.That(SafetensorsWriter.ToBFloat16(1f + 1f / 256), Is.EqualTo(0x3F80));
        // 1 + 3·2^-8 lies between 1 + 2^-7 (odd) and 1 + 2^-6 (even): goes to the even one.
        Assert.That(SafetensorsWriter.ToBFloat16(1f + 3f / 256), Is.EqualTo(0x3F82));
        Assert.That(float.IsNaN(SafetensorsWriter.FromBFloat16(SafetensorsWriter.ToBFloat16(float.NaN))));
        Assert.That(SafetensorsWriter.FromBFloat16(SafetensorsWriter.ToBFloat16(-3.5f)), Is.EqualTo(-3.5f));
    }

    [Test]
    public void HandWrittenHeader_IsReadWithOffsetsRelativeToTheDataSection()
    {
        var image = Image("""{"x":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},"y":{"dtype":"F16","shape":[4],"data_offsets":[0,8]}}  """, 16);
        using var f = SafetensorsFile.OpenBuffer(image, "t");
        Assert.That(f.GetTensor("y").DataOffset, Is.EqualTo(f.DataSectionOffset));
        Assert.That(f.GetTensor("x").DataOffset, Is.EqualTo(f.DataSectionOffset + 8));
        Assert.That(f.Metadata, Is.Empty);
    }

    private const string Good = """{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}""";

    [Test]
    public void Truncated_Refused()
    {
        var image = Image(Good, 16);
        foreach (int length in new[] { 0, 5, 9, 20, image.Length - 17, image.Length - 1 })
        {
            var ex = Corrupt(image[..length]);
            TestContext.Out.WriteLine($"{length}: {ex.Message}");
        }
        Assert.That(Corrupt(image[..^1]).Reason, Does.Contain("outside the data section"));
    }

    [Test]
    public void BadHeaderLength_Refused()
    {
        Assert.That(Corrupt(Image(Good, 16, lengthOverride: ulong.MaxValue)).Reason, Does.Contain("exceeds the limit"));
        Assert.That(Corrupt(Image(Good, 16, lengthOverride: 200_000_000)).Reason, Does.Contain("exceeds the limit"));
        Assert.That(Corrupt(Image(Good, 16, lengthOverride: 10_000)).Reason, Does.Contain("does not fit in the file"));
        Assert.That(Corrupt(Image(Good, 16, lengthOverride: 0)).Reason, Does.Contain("does not fit"));
        // A length shorter than the JSON cuts it: the remainder becomes data and the JSON is truncated.
        Assert.That(Corrupt(Image(Good, 16, lengthOverride: 30)).Offset, Is.GreaterThanOrEqualTo(8));
    }

    [TestCase("""[1,2,3]""", "expected '{'")]
    [TestCase(""" {"w":1}""", "expected '{'")]
    [TestCase("""{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}""", "JSON")]
    [TestCase("""{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},}""", "JSON")]
    [TestCase("""{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}{}""", "JSON")]
    [TestCase("""{"w":{"dtype":"F32","shape":[[2],2],"data_offsets":[0,16]}}""", "JSON")]
    [TestCase("""{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16],"extra":{"a":{"b":1}}}}""", "unexpected or repeated field")]
    [TestCase("""{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16],"extra":1}}""", "unexpected or repeated field 'extra'")]
    [TestCase("""{"w":{"dtype":"F32","dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}""", "repeated field 'dtype'")]
    [TestCase("""{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"w":{"dtype":"F32","shape":[],"data_offsets":[16,20]}}""", "duplicate header key")]
    [TestCase("""{"w":{"shape":[2,2],"data_offsets":[0,16]}}""", "lacks 'dtype'")]
    [TestCase("""{"w":{"dtype":"F32","data_offsets":[0,16]}}""", "lacks 'shape'")]
    [TestCase("""{"w":{"dtype":"F32","shape":[2,2]}}""", "lacks 'data_offsets'")]
    [TestCase("""{"w":{"dtype":"F32","shape":[2,-2],"data_offsets":[0,16]}}""", "non-negative integer")]
    [TestCase("""{"w":{"dtype":"F32","shape":[2,2.5],"data_offsets":[0,16]}}""", "non-negative integer")]
    [TestCase("""{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0]}}""", "data offset")]
    [TestCase("""{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16,32]}}""", "two offsets")]
    [TestCase("""{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[16,0]}}""", "end before begin")]
    [TestCase("""{"w":{"dtype":32,"shape":[2,2],"data_offsets":[0,16]}}""", "'dtype'")]
    [TestCase("""{"__metadata__":{"format":1},"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}""", "metadata values are strings")]
    [TestCase("""{"w":"nope"}""", "tensor 'w'")]
    [TestCase("""{"":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}""", "empty tensor name")]
    public void BadJson_Refused(string header, string reason)
    {
        var ex = Corrupt(Image(header, 16));
        TestContext.Out.WriteLine(ex.Message);
        Assert.That(ex.Reason, Does.Contain(reason));
        Assert.That(ex.FilePath, Is.EqualTo("test.safetensors"));
        Assert.That(ex.Offset, Is.InRange(0, 8 + header.Length));
    }

    [Test]
    public void DeeplyNestedJson_RefusedWithoutRecursion()
    {
        string header = "{\"w\":{\"shape\":" + new string('[', 100_000) + new string(']', 100_000) + "}}";
        var ex = Corrupt(Image(header, 0));
        Assert.That(ex.Reason, Does.Contain("malformed JSON"));
    }

    [Test]
    public void InvalidUtf8Header_Refused()
    {
        var image = Image(Good, 16);
        image[12] = 0xFF;
        Assert.That(Corrupt(image).Reason, Does.Contain("UTF-8"));
    }

    [TestCase("I64", "unsupported dtype 'I64'")]
    [TestCase("F64", "unsupported dtype 'F64'")]
    [TestCase("F8_E4M3", "unsupported dtype")]
    [TestCase("Q4", "unknown dtype 'Q4'")]
    [TestCase("f32", "unknown dtype 'f32'")]
    public void UnknownOrUnsupportedDType_Refused(string dtype, string reason)
    {
        var ex = Corrupt(Image($$$"""{"w":{"dtype":"{{{dtype}}}","shape":[2],"data_offsets":[0,16]}}""", 16));
        Assert.That(ex.Reason, Does.Contain(reason));
    }

    [TestCase("""{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,20]}}""", 16, "outside the data section")]
    [TestCase("""{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[9223372036854775800,9223372036854775807]}}""", 16, "outside the data section")]
    [TestCase("""{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,18446744073709551615]}}""", 16, "data offset")]
    public void OutOfRangeOffsets_Refused(string header, int dataBytes, string reason) =>
        Assert.That(Corrupt(Image(header, dataBytes)).Reason, Does.Contain(reason));

    [Test]
    public void OverlappingRanges_Refused()
    {
        var ex = Corrupt(Image("""{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}""", 24));
        Assert.That(ex.Reason, Does.Contain("overlaps tensor 'a'"));
        // Two tensors aliasing the same bytes.
        ex = Corrupt(Image("""{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F16","shape":[8],"data_offsets":[0,16]}}""", 16));
        Assert.That(ex.Reason, Does.Contain("overlaps"));
    }

    [Test]
    public void HolesAndTrailingBytes_Refused()
    {
        var ex = Corrupt(Image("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}}""", 20));
        Assert.That(ex.Reason, Does.Contain("hole"));
        ex = Corrupt(Image("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}""", 12));
        Assert.That(ex.Reason, Does.Contain("after the last tensor"));
    }

    [TestCase("""{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}}""", 16)]
    [TestCase("""{"w":{"dtype":"F16","shape":[2,2],"data_offsets":[0,16]}}""", 16)]
    [TestCase("""{"w":{"dtype":"BF16","shape":[],"data_offsets":[0,4]}}""", 4)]
    [TestCase("""{"w":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904],"data_offsets":[0,16]}}""", 16)]
    public void SizeMismatch_Refused(string header, int dataBytes)
    {
        var ex = Corrupt(Image(header, dataBytes));
        TestContext.Out.WriteLine(ex.Message);
        Assert.That(ex.Reason, Does.Contain("bytes").Or.Contain("overflows"));
    }

    [Test]
    public void TooManyDimensions_Refused() =>
        Assert.That(Corrupt(Image("""{"w":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]}}""", 4)).Reason, Does.Contain("dimensions"));

    [Test]
    public void EveryTruncationAndByteFlip_FailsCleanly()
    {
        // Mutation sweep: every prefix and many single-byte corruptions either parse or throw ModelFormatException.
        string dir = TestData.TempDir();
        try
        {
            string path = Path.Combine(dir, "m.safetensors");
            using (var w = SafetensorsWriter.Create(path))
            {
                w.AddMetadata("format", "pt");
                w.AddTensor("a", SafetensorsDType.F16, [3, 2]);
                w.AddTensor("b", SafetensorsDType.F32, [2]);
                w.WriteHeader();
                w.WriteTensorData("a", RandomValues(6, 4));
                w.WriteTensorData("b", RandomValues(2, 5));
                w.Complete();
            }
            var image = File.ReadAllBytes(path);
            for (int n = 0; n < image.Length; n++)
                Assert.Throws<ModelFormatException>(() => SafetensorsFile.OpenBuffer(image[..n], "t").Dispose(), $"prefix {n}");
            var rng = new Random(7);
            for (int i = 0; i < 2000; i++)
            {
                var copy = (byte[])image.Clone();
                copy[rng.Next((int)Math.Min(copy.Length, 8 + 200))] = (byte)rng.Next(256);
                try { SafetensorsFile.OpenBuffer(copy, "t").Dispose(); }
                catch (ModelFormatException) { }
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
