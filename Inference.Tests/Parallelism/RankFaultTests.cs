using Inference.Engine;
using Inference.KvCache;
using Inference.Loading;
using Inference.Parallelism;
using Inference.Sampling;
using Inference.Tests.Support;

namespace Inference.Tests.Parallelism;

/// <summary>
/// A rank that throws in the middle of a step: the ranks waiting for it in collectives leave them, the step fails with
/// <see cref="RankFailedException"/> carrying the rank's error, and the next step runs on every rank again. Every wait
/// is guarded, so a hang fails the test instead of stalling the run.
/// </summary>
[NonParallelizable]
public class RankFaultTests
{
    private static string _dir = "";

    private static string ModelPath => Path.Combine(_dir, "fault.gguf");

    [OneTimeSetUp]
    public void WriteModel()
    {
        _dir = TestData.TempDir();
        SyntheticModel.Write(ModelPath, new SyntheticModelOptions
        {
            Dimension = 64, LayerCount = 2, HeadCount = 8, KvHeadCount = 2, FeedForwardLength = 128, Seed = 12,
            TokenizerDonorPath = TestData.Stories260K,
        });
    }

    [OneTimeTearDown]
    public void Delete() => Directory.Delete(_dir, recursive: true);

    private static EngineOptions Options(int tensor, int pipeline, int context) => new()
    {
        Threads = 2,
        ContextLength = 128,
        Device = Device.Cpu,
        TensorParallelSize = tensor,
        PipelineParallelSize = pipeline,
        ContextParallelSize = context,
        KvCache = new KvCacheOptions { DataType = KvCacheDataType.Float32, BlockSize = 8 },
    };

    private static readonly int[] Prompt = [1, 45, 102, 7, 300, 12, 88, 9, 14, 250, 61, 5, 33, 2, 190, 77, 21];

    [Test]
    public async Task Abort_ReleasesRanksInCollectives_AndResetReArmsTheGroup()
    {
        using var guard = new CancellationTokenSource(TimeSpan.FromMinutes(1));
        using var group = new SharedMemoryRankGroup(3);
        // Rank 2 never joins: rank 0 waits in an all-reduce, rank 1 in a receive from rank 2, until the group is aborted
        // (whether they are already waiting or arrive after the abort, they leave with RankAbortedException).
        var reduce = Task.Factory.StartNew(() => group.AllReduce(0, new float[8]), TaskCreationOptions.LongRunning);
        var receive = Task.Factory.StartNew(() => group.Receive(1, 2, new float[4]), TaskCreationOptions.LongRunning);
        group.Abort();
        Assert.ThrowsAsync<RankAbortedException>(async () => await reduce.WaitAsync(guard.Token));
        Assert.ThrowsAsync<RankAbortedException>(async () => await receive.WaitAsync(guard.Token));

        group.Reset();
        var data = new[] { new float[] { 1, 2 }, new float[] { 10, 20 }, new float[] { 100, 200 } };
        var ranks = Enumerable.Range(0, 3).Select(r => Task.Factory.StartNew(() => group.AllReduce(r, data[r]), TaskCreationOptions.LongRunning)).ToArray();
        await Task.WhenAll(ranks).WaitAsync(guard.Token);
        Assert.That(data, Has.All.EqualTo(new float[] { 111, 222 }));
    }

    [TestCase(2, 1, 1)]
    [TestCase(1, 2, 1)]
    [TestCase(1, 1, 2)]
    [TestCase(2, 1, 2)]
    public async Task RankFault_FailsTheStepWithTheRanksError_AndTheNextStepRuns(int tensor, int pipeline, int context)
    {
        using var guard = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        var sampling = new SamplingOptions { Temperature = 0, MaxTokens = 6 };
        await using var single = await InferenceEngine.LoadAsync(ModelPath, Options(1, 1, 1));
        var expected = (await single.CompleteAsync(Prompt, sampling).WaitAsync(guard.Token)).TokenIds;

        await using var parallel = await InferenceEngine.LoadAsync(ModelPath, Options(tensor, pipeline, context));
        var executor = (ParallelExecutor)parallel.Loop.Executor;
        // The last rank fails halfway through its part of the graph, after collectives the others have entered.
        int rank = tensor * pipeline * context - 1;
        var fault = new InvalidOperationException("injected fault");
        executor.InjectFault(rank, executor.OperationCount(rank) / 2, fault);
        var e = Assert.ThrowsAsync<RankFailedException>(async () => await parallel.CompleteAsync(Prompt, sampling).WaitAsync(guard.Token));
        Assert.That(e!.Rank, Is.EqualTo(rank));
        Assert.That(e.InnerException, Is.SameAs(fault));
        Assert.That(e.Message, Does.Contain("injected fault").And.Not.Contain("\n"));

        var again = await parallel.CompleteAsync(Prompt, sampling).WaitAsync(guard.Token);
        Assert.That(again.TokenIds, Is.EqualTo(expected));
        Assert.That((await parallel.GetStatsAsync().WaitAsync(guard.Token)).KvCache.UsedBlockCount, Is.Zero);
    }
}
