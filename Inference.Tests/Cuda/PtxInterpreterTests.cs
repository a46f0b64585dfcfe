using System.Runtime.InteropServices;

namespace Inference.Tests.Cuda;

/// <summary>
/// The interpreter's own rules on small kernels: divergent lanes run with their own program counters and reconverge,
/// warp-wide instructions need the whole warp, and plain shared memory accesses race-check across barriers.
/// </summary>
public class PtxInterpreterTests
{
    private const string Divergent = """
        .visible .entry diverge(
        	.param .u64 p_out,
        	.param .u32 p_shuffle_inside
        )
        {
        	.reg .pred  more, odd, inside;
        	.reg .u32   lane, i, acc, t, mode;
        	.reg .u64   out, addr, tmp64;
        	ld.param.u64    out, [p_out];
        	ld.param.u32    mode, [p_shuffle_inside];
        	cvta.to.global.u64 out, out;
        	mov.u32         lane, %tid.x;
        	setp.ne.u32     inside, mode, 0;
        	mov.u32         acc, 0;
        	mov.u32         i, 0;
        LOOP:                                   // lane n runs n trips
        	setp.ge.u32     more, i, lane;
        	@more bra       LOOP_DONE;
        	add.u32         acc, acc, i;
        	add.u32         i, i, 1;
        	bra             LOOP;
        LOOP_DONE:
        	and.b32         t, lane, 1;
        	setp.eq.u32     odd, t, 1;
        	@!odd bra       EVEN;
        	add.u32         acc, acc, 1000;
        	@!inside bra    EVEN;
        	shfl.sync.bfly.b32 acc, acc, 1, 0x1f, 0xffffffff;
        EVEN:
        	shfl.sync.bfly.b32 t, acc, 1, 0x1f, 0xffffffff;
        	setp.lt.u32     more, lane, 20;
        	@!more ret;                         // lanes 20.. retire early
        	mul.wide.u32    tmp64, lane, 4;
        	add.u64         addr, out, tmp64;
        	st.global.f32   [addr], t;
        	ret;
        }
        """;

    [Test]
    public void DivergentLanesReconvergeForTheShuffle()
    {
        var mem = new PtxInterpreter.Memory();
        ulong at = mem.Alloc(32 * 4);
        MemoryMarshal.Cast<byte, uint>(mem.Bytes(at, 128)).Fill(0xDEADBEEF);
        PtxInterpreter.Parse(Divergent).Launch("diverge", 1, 1, 32, mem, at, 0);
        var got = MemoryMarshal.Cast<byte, uint>(mem.Bytes(at, 128)).ToArray();
        static uint Acc(int lane) => (uint)(lane * (lane - 1) / 2 + (lane % 2 == 1 ? 1000 : 0));
        for (int lane = 0; lane < 32; lane++)
            Assert.That(got[lane], Is.EqualTo(lane < 20 ? Acc(lane ^ 1) : 0xDEADBEEF), $"lane {lane}");
    }

    [Test]
    public void AShuffleInsideADivergentBranchFails()
    {
        var mem = new PtxInterpreter.Memory();
        ulong at = mem.Alloc(32 * 4);
        var ex = Assert.Throws<NotSupportedException>(() => PtxInterpreter.Parse(Divergent).Launch("diverge", 1, 1, 32, mem, at, 1));
        Assert.That(ex!.Message, Does.Contain("partial warp"));
    }

    private const string Exchange = """
        .visible .entry exchange(
        	.param .u64 p_out,
        	.param .u32 p_mode
        )
        {
        	.reg .pred  nobar, same, again, second;
        	.reg .u32   tid, mode, at, other, v, k;
        	.reg .u64   out, addr, tmp64;
        	.shared .align 16 .b32 s_words[64];
        	ld.param.u64    out, [p_out];
        	ld.param.u32    mode, [p_mode];
        	cvta.to.global.u64 out, out;
        	mov.u32         tid, %tid.x;
        	shl.b32         at, tid, 2;
        	add.u32         at, at, s_words;
        	st.shared.u32   [at], tid;
        	setp.eq.u32     nobar, mode, 1;
        	setp.eq.or.u32  nobar, mode, 3, nobar;
        	setp.eq.u32     same, mode, 3;
        	selp.u32        k, 1, 33, same;     // mode 3 reads lane ^ 1 of its own warp, else of the other warp
        	@nobar bra      NO_BARRIER;
        	bar.sync        0;
        NO_BARRIER:
        	xor.b32         other, tid, k;
        	shl.b32         other, other, 2;
        	add.u32         other, other, s_words;
        	ld.shared.u32   v, [other];
        	setp.eq.u32     again, mode, 2;
        	setp.ge.and.u32 second, tid, 32, again;
        	@second st.shared.u32 [at], v;       // warp 1 overwrites what warp 0 read, no barrier between
        	mul.wide.u32    tmp64, tid, 4;
        	add.u64         addr, out, tmp64;
        	st.global.f32   [addr], v;
        	ret;
        }
        """;

    [TestCase(0, null)]
    [TestCase(1, "never written")]                                  // warp 0 runs before warp 1 stores
    [TestCase(2, "another thread read since the last barrier")]
    [TestCase(3, "without a barrier")]
    public void SharedWordsNeedABarrierBetweenThreads(int mode, string? error)
    {
        var mem = new PtxInterpreter.Memory();
        ulong at = mem.Alloc(64 * 4);
        var module = PtxInterpreter.Parse(Exchange);
        if (error is not null)
        {
            var ex = Assert.Throws<InvalidOperationException>(() => module.Launch("exchange", 1, 1, 64, mem, at, (ulong)mode));
            Assert.That(ex!.Message, Does.Contain(error));
            return;
        }
        module.Launch("exchange", 1, 1, 64, mem, at, (ulong)mode);
        var got = MemoryMarshal.Cast<byte, uint>(mem.Bytes(at, 256)).ToArray();
        Assert.That(got, Is.EqualTo(Enumerable.Range(0, 64).Select(t => (uint)(t ^ 33))));
    }
}
