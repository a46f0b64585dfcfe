using Inference.Kernels.Reference;
using System.Text.Json.Nodes;
using Inference.Cuda;
using Inference.KvCache;
using Inference.Loading;
using Inference.Tests.Models;
using Inference.Engine;
using Inference.Sampling;
using Inference.Tests.Kernels;
using Inference.Tests.Support;

namespace Inference.Tests.Cuda;

/// <summary>
/// The whole engine (scheduler, KV cache manager, batching, prefix files) over the device executor on ILGPU's CPU
/// accelerator, against the CPU engine; and how <see cref="EngineOptions.Device"/> resolves without a GPU.
/// </summary>
public class DeviceEngineTests
{
    private static EngineOptions OnCpuAccelerator(EngineOptions options) =>
        options.UseAccelerator(DeviceTestAccelerator.Cpu, CudaAttentionKernels.Ilgpu);

    [Test]
    public async Task Stories260K_Greedy64_EqualsTheCpuEngine()
    {
        var sampling = SamplingOptions.Greedy with { MaxTokens = 64, EndOfSequence = EndOfSequenceHandling.Ignore };
        await using var cpu = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Device = Device.Cpu, Threads = 2 });
        await using var device = await InferenceEngine.LoadAsync(TestData.Stories260K, OnCpuAccelerator(new EngineOptions { Threads = 2 }));
        Assert.That(device.DeviceName, Does.StartWith("ILGPU CPU accelerator"));
        Assert.That(cpu.DeviceName, Does.StartWith("CPU"));
        var expected = await cpu.CompleteAsync("Once upon a time", sampling);
        var actual = await device.CompleteAsync("Once upon a time", sampling);
        Assert.That(actual.TokenIds, Has.Count.EqualTo(64));
        Assert.That(actual.TokenIds, Is.EqualTo(expected.TokenIds));
        Assert.That(actual.Text, Is.EqualTo(expected.Text));
    }

    /// <summary>
    /// The engine with a Q8_0 or FP8 K/V cache on the device executor (no longer refused) against the CPU engine with the
    /// same type: a 45-token prompt in chunks of 16 (prefill over cached blocks), then greedy decoding.
    /// </summary>
    [TestCase(KvCacheDataType.Q8_0)]
    [TestCase(KvCacheDataType.Fp8E4M3)]
    public async Task BlockFormatKv_MatchesTheCpuEngine(KvCacheDataType type)
    {
        string model = DeviceForwardExecutorTests.Model(8, 2, GgmlType.F32, headDim: 32);
        EngineOptions Options() => new() { Threads = 2, MaxNumBatchedTokens = 16, KvCache = new KvCacheOptions { BlockSize = 8, DataType = type } };
        await using var cpu = await InferenceEngine.LoadAsync(model, Options() with { Device = Device.Cpu });
        await using var device = await InferenceEngine.LoadAsync(model, OnCpuAccelerator(Options()));
        Assert.That(device.DeviceName, Does.StartWith("ILGPU CPU accelerator"));
        var rng = new Random(5);
        var prompt = Enumerable.Range(0, 45).Select(_ => 1 + rng.Next(cpu.Config.VocabSize - 1)).ToArray();
        var expected = await cpu.GetLogitsAsync(prompt);
        var actual = await device.GetLogitsAsync(prompt);
        double error = ReferenceCompare.RelativeL2(actual, expected);
        TestContext.Out.WriteLine($"{type}: last logits relative L2 {error:E2}");
        Assert.That(error, Is.LessThan(1e-2));
        Assert.That(System.Numerics.Tensors.TensorPrimitives.IndexOfMax(actual), Is.EqualTo(System.Numerics.Tensors.TensorPrimitives.IndexOfMax(expected)));
    }

    /// <summary>Greedy decoding of the three mixture-of-experts flavours (random weights) on the device executor equals the CPU engine's.</summary>
    [TestCase("llama")]
    [TestCase("qwen2moe")]
    [TestCase("qwen3moe")]
    public async Task MixtureOfExperts_Greedy_EqualsTheCpuEngine(string architecture)
    {
        string model = DeviceForwardExecutorTests.Model(8, 2, GgmlType.F32, architecture: architecture, experts: 6);
        var sampling = SamplingOptions.Greedy with { MaxTokens = 24, EndOfSequence = EndOfSequenceHandling.Ignore };
        await using var cpu = await InferenceEngine.LoadAsync(model, new EngineOptions { Device = Device.Cpu, Threads = 2 });
        await using var device = await InferenceEngine.LoadAsync(model, OnCpuAccelerator(new EngineOptions { Threads = 2 }));
        var expected = await cpu.CompleteAsync("Once upon a time", sampling);
        var actual = await device.CompleteAsync("Once upon a time", sampling);
        Assert.That(actual.TokenIds, Has.Count.EqualTo(24));
        Assert.That(actual.TokenIds, Is.EqualTo(expected.TokenIds));
    }

    [Test]
    public async Task ConcurrentRequests_AreBatched_AndEachEqualsItsCpuOutput()
    {
        string[] prompts = ["Once upon a time", "Lily and Ben", "The cat", "One day, a little girl named Sue went to the park"];
        var sampling = SamplingOptions.Greedy with { MaxTokens = 16, EndOfSequence = EndOfSequenceHandling.Ignore };
        await using var cpu = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Device = Device.Cpu, Threads = 2 });
        // NOTE: a small token budget chunks the longest prompt while the others decode: mixed prefill + decode steps.
        await using var device = await InferenceEngine.LoadAsync(TestData.Stories260K,
            OnCpuAccelerator(new EngineOptions { Threads = 2, MaxNumBatchedTokens = 8, KvCache = new() { BlockSize = 8 } }));
        var expected = new List<int[]>();
        foreach (var p in prompts) expected.Add([.. (await cpu.CompleteAsync(p, sampling)).TokenIds]);
        var actual = await Task.WhenAll(prompts.Select(p => device.CompleteAsync(p, sampling)));
        for (int i = 0; i < prompts.Length; i++) Assert.That(actual[i].TokenIds, Is.EqualTo(expected[i]), prompts[i]);
    }

    /// <summary>
    /// Concurrent requests with every sampling option (seeded) on the device executor: tokens chosen on the device equal
    /// those the host sampler chooses from the same executor's logits; requests with logprobs keep the host path.
    /// </summary>
    [Test]
    public async Task DeviceSampling_ChoosesWhatTheHostSamplerChooses()
    {
        SamplingOptions[] options =
        [
            SamplingOptions.Greedy,
            new() { Temperature = 0.9f, Seed = 1 },
            new() { Temperature = 1.3f, TopK = 0, TopP = 0.8f, MinP = 0, Seed = 2 },
            new() { Temperature = 0.7f, TopK = 5, TopP = 1, MinP = 0.1f, RepetitionPenalty = 1.3f, PenaltyLastN = 16, Seed = 3 },
            new() { Temperature = 1f, FrequencyPenalty = 0.8f, PresencePenalty = -0.5f, Seed = 4 },
            new() { Temperature = 1f, TopK = 0, TopP = 1, MinP = 0, Seed = 5, Logprobs = 2 },
        ];
        string[] prompts = ["Once upon a time", "Lily and Ben", "The cat", "One day, a little girl", "Tom had a big", "The sun"];
        async Task<(List<int[]> Tokens, long OnDevice)> Run(bool deviceSampling)
        {
            await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K,
                new EngineOptions { Threads = 2, MaxNumBatchedTokens = 8, KvCache = new() { BlockSize = 8 } }
                    .UseAccelerator(DeviceTestAccelerator.Cpu, CudaAttentionKernels.Ilgpu, deviceSampling));
            var done = await Task.WhenAll(prompts.Select((p, i) =>
                engine.CompleteAsync(p, options[i] with { MaxTokens = 24, EndOfSequence = EndOfSequenceHandling.Ignore })));
            return ([.. done.Select(c => c.TokenIds.ToArray())], engine.Loop.DeviceSampledTokenCount);
        }
        var host = await Run(deviceSampling: false);
        var device = await Run(deviceSampling: true);
        Assert.That(host.OnDevice, Is.Zero);
        // Every request but the one with logprobs: 5 × 24 tokens.
        Assert.That(device.OnDevice, Is.EqualTo(5 * 24));
        for (int i = 0; i < prompts.Length; i++) Assert.That(device.Tokens[i], Is.EqualTo(host.Tokens[i]), $"{prompts[i]}: {options[i]}");
    }

    /// <summary>A device executor factory whose device reports the given memory (cuMemGetInfo's numbers on CUDA).</summary>
    private sealed class ReportedMemoryFactory(long free, long total) : IForwardExecutorFactory
    {
        private readonly AcceleratorForwardExecutorFactory _inner = new(DeviceTestAccelerator.Cpu, CudaAttentionKernels.Ilgpu);

        public string? UnavailableReason => null;

        public (long Free, long Total)? GetDeviceMemory() => (free, total);

        public IForwardExecutor Create(ForwardExecutorContext context) => _inner.Create(context);
    }

    /// <summary>
    /// The KV pool on a device is --gpu-memory-utilization × the device's total memory (its own report, not the host's)
    /// − weights − activations, and the engine refuses a device with less free memory than that fraction.
    /// </summary>
    [Test]
    public async Task KvPool_IsSizedFromTheDevicesMemoryReport()
    {
        const long MiB = 1L << 20;
        EngineOptions Options(long free, long total) => new()
        {
            Threads = 1, ContextLength = 256, MaxNumSeqs = 256, KvCache = new KvCacheOptions { MemoryFraction = 0.5 },
            Device = Device.Auto, ExecutorFactory = new ReportedMemoryFactory(free, total),
        };
        await using (var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, Options(free: 60 * MiB, total: 64 * MiB)))
        {
            var plan = engine.KvMemory;
            Assert.That(engine.DeviceName, Does.StartWith("ILGPU CPU accelerator"));
            Assert.That(plan.TotalBytes, Is.EqualTo(64 * MiB));
            Assert.That(plan.RuleBytes, Is.EqualTo(32 * MiB - plan.WeightBytes - plan.ActivationBytes));
            Assert.That(plan.RuleBytes, Is.LessThan(plan.CapBytes), "the device's memory, not the sequences' need, sizes this pool");
            Assert.That(plan.PoolBytes, Is.EqualTo(plan.RuleBytes));
            Assert.That((await engine.GetStatsAsync()).KvCache.TotalBlockCount, Is.EqualTo(plan.BlockCount));
            Assert.That(engine.Loop.DeviceName, Is.EqualTo(engine.DeviceName));
        }
        var e = Assert.ThrowsAsync<ArgumentException>(() => InferenceEngine.LoadAsync(TestData.Stories260K, Options(free: 20 * MiB, total: 64 * MiB)))!;
        Assert.That(e.Message, Does.Contain("only 20.0 MiB is free").And.Not.Contain('\n'));
    }

    [Test]
    public async Task PrefixFiles_MoveBetweenDeviceAndCpuEngines()
    {
        var dir = TestData.TempDir();
        try
        {
            const string system = "Once upon a time, there was a little girl named Lily. She liked to play outside in the park with her friends.";
            var kv = new Inference.KvCache.KvCacheOptions { BlockSize = 8 };
            await using var cpu = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Device = Device.Cpu, Threads = 2, KvCache = kv });
            await using var device = await InferenceEngine.LoadAsync(TestData.Stories260K, OnCpuAccelerator(new EngineOptions { Threads = 2, KvCache = kv }));
            var prompt = cpu.Tokenize(system + " One day");
            var expected = await cpu.GetLogitsAsync(prompt);

            // device → file → CPU: the device's blocks are read back to the host
            string fromDevice = Path.Combine(dir, "device.kvprefix");
            int saved = await device.SavePrefixAsync(system, fromDevice);
            Assert.That(saved, Is.GreaterThanOrEqualTo(16));
            await using (var cpu2 = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Device = Device.Cpu, Threads = 2, KvCache = kv }))
            {
                Assert.That(await cpu2.LoadPrefixAsync(fromDevice), Is.EqualTo(saved));
                var hit = await cpu2.GetLogitsAsync(prompt);
                Assert.That(ReferenceCompare.RelativeL2(hit, expected), Is.LessThan(1e-3));
            }

            // CPU → file → device: the file's blocks are written into device memory
            string fromCpu = Path.Combine(dir, "cpu.kvprefix");
            Assert.That(await cpu.SavePrefixAsync(system, fromCpu), Is.EqualTo(saved));
            await using var device2 = await InferenceEngine.LoadAsync(TestData.Stories260K, OnCpuAccelerator(new EngineOptions { Threads = 2, KvCache = kv }));
            Assert.That(await device2.LoadPrefixAsync(fromCpu), Is.EqualTo(saved));
            var stats = await device2.GetStatsAsync();
            var deviceHit = await device2.GetLogitsAsync(prompt);
            Assert.That(ReferenceCompare.RelativeL2(deviceHit, expected), Is.LessThan(1e-3));
            Assert.That(stats.KvCache.UsedBlockCount, Is.EqualTo(saved / 8), "the prefix is pinned in the pool");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Test]
    public async Task Auto_WithoutAGpu_RunsOnTheCpu()
    {
        if (CudaBackend.Probe().IsAvailable) Assert.Ignore("a CUDA device exists here: Auto picks it");
        await using var engine = await InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Threads = 1 });
        Assert.That(engine.Device, Is.EqualTo(Device.Cpu));
        Assert.That(engine.DeviceName, Does.StartWith("CPU"));
    }

    [Test]
    public void Cuda_WithoutAGpu_ThrowsOneClearLine()
    {
        if (CudaBackend.Probe().IsAvailable) Assert.Ignore("a CUDA device exists here");
        var e = Assert.ThrowsAsync<DeviceNotAvailableException>(() => InferenceEngine.LoadAsync(TestData.Stories260K, new EngineOptions { Device = Device.Cuda }));
        Assert.That(e!.Device, Is.EqualTo(Device.Cuda));
        Assert.That(e.Message, Does.StartWith("Device.Cuda is not available: no CUDA device"));
        Assert.That(e.Message, Does.Not.Contain("\n"));
        Assert.That(e, Is.InstanceOf<NotSupportedException>());
    }

    [Test]
    public void UseCuda_WithoutAGpu_ThrowsTheSameWay()
    {
        if (CudaBackend.Probe().IsAvailable) Assert.Ignore("a CUDA device exists here");
        var options = new EngineOptions().UseCuda(new CudaOptions { Attention = CudaAttentionKernels.Ilgpu });
        Assert.That(options.Device, Is.EqualTo(Device.Cuda));
        Assert.ThrowsAsync<DeviceNotAvailableException>(() => InferenceEngine.LoadAsync(TestData.Stories260K, options));
    }

    /// <summary>
    /// Hugging Face checkpoints through both engines: qwen2 (Q/K/V biases, tied output, NeoX RoPE), llama BF16 (widened
    /// to F32 on the device) with Llama 3 RoPE frequency factors, llama F16 with linear RoPE scaling.
    /// </summary>
    [TestCase("qwen2", SafetensorsDType.F32, true, "")]
    [TestCase("llama", SafetensorsDType.BF16, false, "llama3")]
    [TestCase("llama", SafetensorsDType.F16, false, "linear")]
    public async Task HfCheckpoints_Logits_MatchTheCpuEngine(string type, SafetensorsDType dtype, bool tied, string scaling)
    {
        var dir = TestData.TempDir();
        try
        {
            HfTestCheckpoint.Write(dir, new HfTestCheckpointOptions { ModelType = type, DType = dtype, TieWordEmbeddings = tied, Hidden = 64, Heads = 4, KvHeads = 2, Intermediate = 96 });
            if (scaling.Length > 0)
            {
                string configPath = Path.Combine(dir, "config.json");
                var config = JsonNode.Parse(File.ReadAllText(configPath))!.AsObject();
                config["rope_scaling"] = scaling == "linear"
                    ? new JsonObject { ["type"] = "linear", ["factor"] = 4.0 }
                    : new JsonObject { ["rope_type"] = "llama3", ["factor"] = 8.0, ["low_freq_factor"] = 1.0, ["high_freq_factor"] = 4.0, ["original_max_position_embeddings"] = 64 };
                File.WriteAllText(configPath, config.ToJsonString());
            }
            // NOTE: f32 KV: with f16 KV the CPU accelerator's software f16 rounding (one ulp off at times) adds ≈ 5e-4.
            var kv = new Inference.KvCache.KvCacheOptions { DataType = Inference.KvCache.KvCacheDataType.Float32 };
            await using var cpu = await InferenceEngine.LoadAsync(dir, new EngineOptions { Device = Device.Cpu, Threads = 2, KvCache = kv });
            await using var device = await InferenceEngine.LoadAsync(dir, OnCpuAccelerator(new EngineOptions { Threads = 2, KvCache = kv }));
            Assert.That(cpu.Config.HasAttentionBias, Is.EqualTo(type == "qwen2"));
            var rng = new Random(9);
            var prompt = Enumerable.Range(0, 40).Select(_ => 1 + rng.Next(cpu.Config.VocabSize - 1)).ToArray();
            var expected = await cpu.GetLogitsAsync(prompt);
            var actual = await device.GetLogitsAsync(prompt);
            double error = ReferenceCompare.RelativeL2(actual, expected);
            TestContext.Out.WriteLine($"{type} {dtype} tied={tied} scaling={scaling}: relative L2 {error:E2}");
            Assert.That(error, Is.LessThan(1e-4));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
