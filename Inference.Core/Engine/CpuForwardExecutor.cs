using Inference.Backends.Cpu;
using Inference.KvCache;
using Inference.Models;

namespace Inference.Engine;

/// <summary>The CPU path: <see cref="LlamaModel"/> over <see cref="PagedKvAttention"/> in host memory, on a worker pool.</summary>
internal sealed class CpuForwardExecutor : IForwardExecutor
{
    private readonly LlamaModel _model;
    private readonly WorkerPool _pool;
    private readonly KvCacheStorage _storage;
    private readonly PagedKvAttention _attention;

    public CpuForwardExecutor(ForwardExecutorContext context)
    {
        var c = context.Model.Config;
        _model = context.Model;
        _model.PrepareForCpu();
        _storage = new KvCacheStorage(c.LayerCount, context.BlockCount, context.KvOptions.BlockSize, c.KvHeadCount, c.HeadDim, context.KvOptions.DataType);
        _attention = new PagedKvAttention(_storage, context.KvCache, c);
        _pool = new WorkerPool(context.Threads);
        DeviceName = $"CPU, {context.Threads} thread{(context.Threads == 1 ? "" : "s")}";
    }

    public Device Device => Device.Cpu;

    public string DeviceName { get; }

    public IKvBlockStorage Storage => _storage;

    public void Forward(ModelBatch batch, Span<float> logits) => _model.Forward(batch, _attention, logits, _pool);

    public void Dispose()
    {
        _pool.Dispose();
        _storage.Dispose();
    }
}
