using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using Inference.Backends.Cpu;
using Inference.Loading;

namespace Inference.Benchmarks.Kernels;

/// <summary>
/// <c>MatMul.Multiply</c> on a 1024 × 2816 weight matrix (a small model's FFN shape) per weight type, streamed
/// from DRAM: each invocation uses the next copy in a ring larger than the last-level cache.
/// The "Weights GB/s" column is weight bytes per call divided by the mean time.
/// </summary>
[Config(typeof(Config))]
public class MatMulBenchmarks
{
    public const int Rows = 2816;
    public const int Cols = 1024;

    private WeightRing _ring = null!;
    private WorkerPool _pool = null!;
    private float[] _x = [];
    private float[] _y = [];
    private int _next;

    [Params(GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_K, GgmlType.Q6_K)]
    public GgmlType Type { get; set; }

    [Params(1, 8)]
    public int Batch { get; set; }

    [Params(1, 2)]
    public int Threads { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _ring = new WeightRing(Type, Rows, Cols, 768L << 20);
        _pool = new WorkerPool(Threads);
        var rng = new Random(2);
        _x = new float[Batch * Cols];
        for (int i = 0; i < _x.Length; i++) _x[i] = (float)(rng.NextDouble() * 2 - 1);
        _y = new float[Batch * Rows];
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _pool.Dispose();
        _ring.Dispose();
    }

    [Benchmark]
    public void Multiply() => MatMul.Multiply(_ring[_next++], _x, _y, Batch, _pool);

    /// <summary>Weight bytes of one call.</summary>
    public static long WeightBytes(GgmlType type) => GgmlTypeInfo.RowBytes(type, Cols) * Rows;

    private sealed class Config : ManualConfig
    {
        public Config() => AddColumn(new WeightBandwidthColumn());
    }

    private sealed class WeightBandwidthColumn : IColumn
    {
        public string Id => nameof(WeightBandwidthColumn);
        public string ColumnName => "Weights GB/s";
        public bool AlwaysShow => true;
        public ColumnCategory Category => ColumnCategory.Custom;
        public int PriorityInCategory => 0;
        public bool IsNumeric => true;
        public UnitType UnitType => UnitType.Dimensionless;
        public string Legend => "Weight bytes per call / mean time (GB = 1e9 bytes)";
        public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
        public bool IsAvailable(Summary summary) => true;
        public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

        public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
        {
            var stats = summary[benchmarkCase]?.ResultStatistics;
            if (stats is null) return "-";
            var type = (GgmlType)benchmarkCase.Parameters["Type"]!;
            return (WeightBytes(type) / stats.Mean).ToString("F2"); // bytes per ns = GB/s
        }
    }
}
