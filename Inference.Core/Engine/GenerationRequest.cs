using System.Diagnostics;
using System.Text;
using System.Threading.Channels;
using Inference.Sampling;
using Inference.Scheduling;
using Inference.Tokenization;

namespace Inference.Engine;

/// <summary>
/// One request's state. Created on the caller's thread; after submission only the engine thread changes it, except
/// <see cref="Cancel"/> which any thread may call.
/// </summary>
internal sealed class GenerationRequest
{
    /// <summary>Tokens the consumer may fall behind before the request is paused (back-pressure).</summary>
    public const int OutputCapacity = 64;

    private readonly StringBuilder _pending = new();   // decoded text not yet emitted (may start a stop string)
    private readonly StringBuilder _text = new();
    private readonly StreamingDecoder _decoder;
    private readonly IReadOnlySet<int> _stopTokens;
    private int _cancelled;
    private int _lastToken;

    public GenerationRequest(long id, int[] promptTokens, SamplingOptions sampling, ModelTokenizer tokenizer, IReadOnlySet<int> stopTokens, int vocabSize, int maxTotalTokens)
    {
        Id = id;
        // NOTE: MaxTokens may be far beyond the context; nothing is sized by it unchecked. The scheduler's request holds
        // the one list of known tokens (prompt and output), sized for every token the context leaves room for.
        int room = Math.Max(1, Math.Min(sampling.MaxTokens, maxTotalTokens - promptTokens.Length));
        Scheduled = new SchedulerRequest(id, promptTokens, room);
        Sampling = sampling;
        Tokenizer = tokenizer;
        _stopTokens = stopTokens;
        Sampler = new Sampler(sampling, vocabSize);
        // NOTE: the grammar is compiled with the constraint; the matcher (its state and mask cache) is per request.
        Matcher = sampling.Constraint?.CreateMatcher(tokenizer, vocabSize, stopTokens);
        MaxTotalTokens = maxTotalTokens;
        if (sampling.Logprobs is not null) Logprobs = new List<TokenLogprobs>(Math.Min(room, 4096));
        _decoder = tokenizer.CreateStreamingDecoder(promptTokens[^1]);
        Output = Channel.CreateBounded<GeneratedToken>(new BoundedChannelOptions(OutputCapacity)
        {
            SingleReader = true,
            SingleWriter = true,
            FullMode = BoundedChannelFullMode.Wait,
        });
    }

    public long Id { get; }
    /// <summary>The request as the scheduler sees it: its known tokens (prompt, then output) and its progress.</summary>
    public SchedulerRequest Scheduled { get; }
    public ReadOnlySpan<int> PromptTokens => Scheduled.TokenIds[..Scheduled.PromptTokenCount];
    /// <summary>Tokens accepted as output (an end-of-generation token that stops the request is not one).</summary>
    public int GeneratedCount { get; private set; }
    public SamplingOptions Sampling { get; }
    public ModelTokenizer Tokenizer { get; }
    public Sampler Sampler { get; }
    /// <summary>Follows the output through <see cref="SamplingOptions.Constraint"/>; null without one.</summary>
    public Constraints.GrammarMatcher? Matcher { get; }
    public int MaxTotalTokens { get; }
    public Channel<GeneratedToken> Output { get; }
    public TaskCompletionSource<Completion> Completion { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    public bool IsCancelled => Volatile.Read(ref _cancelled) != 0;
    /// <summary>True while the consumer has not read what was already produced.</summary>
    public bool IsConsumerBehind => Output.Reader.CanCount && Output.Reader.Count >= OutputCapacity;

    /// <summary>When the request was queued (Stopwatch ticks).</summary>
    public long Submitted { get; set; }
    public long FirstScheduled { get; set; }
    public long FirstToken { get; private set; }
    public long LastToken { get; private set; }
    public int PrefixHitTokens { get; set; }

    /// <summary>Speculative verification steps of this request, tokens proposed in them and tokens accepted.</summary>
    public long SpeculativeSteps { get; set; }
    public long ProposedTokens { get; set; }
    public long AcceptedTokens { get; set; }

    public void Cancel() => Interlocked.Exchange(ref _cancelled, 1);

    private WaitingQueue? _queue;

    /// <summary>Counts the request against <paramref name="queue"/> until it starts or ends.</summary>
    public void EnterQueue(WaitingQueue queue) => _queue = queue;

    /// <summary>The request started (or ended): it no longer counts as waiting. Idempotent.</summary>
    public void LeaveQueue() => Interlocked.Exchange(ref _queue, null)?.Leave();

    /// <summary>
    /// Side work (logits, a prefix file) instead of generation: called on the engine thread, in the step that computed the
    /// last prompt token, with the request's id (its blocks still allocated) and the logits at that position; the
    /// request then ends with <see cref="FinishReason.Length"/> and no token, or with the exception it throws.
    /// </summary>
    public Action<long, ReadOnlySpan<float>>? OnPromptComputed { get; set; }

    /// <summary>
    /// Loading a prefix file instead of generation: its tokens are the request's prompt and each scheduled chunk copies
    /// the file's blocks into the chunk's slots instead of computing them; once all are there the blocks are pinned and
    /// the request ends with <see cref="FinishReason.Length"/>. The caller owns (and disposes) the reader.
    /// </summary>
    public PrefixFile.Reader? PrefixSource { get; set; }

    /// <summary>A beam search carried by this request (its beams are scheduled sequences of their own); null otherwise.</summary>
    public BeamSearchRun? Beam { get; set; }

    /// <summary>Prompt log-probabilities filled in as the prompt's chunks are computed; null when not asked for or done.</summary>
    public TokenLogprobs[]? PromptScores { get; set; }

    /// <summary>Whether the request does side work (logits, a prefix file, a beam search) rather than generate text.</summary>
    public bool IsSideWork => OnPromptComputed is not null || PrefixSource is not null || Beam is not null;

    /// <summary>Disposed when the request ends: cancels it when its stream's token fires.</summary>
    public CancellationTokenRegistration CancelRegistration { get; set; }

    /// <summary>
    /// Requests with the same prompt that start as forks of this one once its prompt is computed (parallel samples),
    /// instead of prefilling it again; engine thread only after submission.
    /// </summary>
    public List<GenerationRequest>? Forks { get; set; }

    /// <summary>Log-probabilities of the generated tokens so far (when asked for).</summary>
    public List<TokenLogprobs>? Logprobs { get; }

    /// <summary>Log-probabilities of the prompt tokens (when asked for), set before the first token.</summary>
    public IReadOnlyList<TokenLogprobs>? PromptLogprobs { get; set; }

    /// <summary>Appends a sampled token; returns the finish reason when the request is done.</summary>
    public FinishReason? Accept(int token, TokenLogprobs? logprobs = null)
    {
        long now = Stopwatch.GetTimestamp();
        if (FirstToken == 0) FirstToken = now;
        LastToken = now;

        if ((Tokenizer.IsEndOfGeneration(token) || _stopTokens.Contains(token)) && Sampling.EndOfSequence == EndOfSequenceHandling.Stop)
        {
            Flush();
            return FinishReason.EndOfSequence;
        }
        GeneratedCount++;
        _lastToken = token;
        if (logprobs is not null) Logprobs?.Add(logprobs);
        Matcher?.TryAccept(token);
        _pending.Append(_decoder.Push(token));
        if (FindStop(out int stopAt))
        {
            _pending.Length = stopAt;
            Emit(token, _pending.ToString(), logprobs);
            _pending.Clear();
            return FinishReason.StopString;
        }
        // Hold back the longest tail that could still grow into a stop string.
        int hold = HeldBack();
        Emit(token, _pending.ToString(0, _pending.Length - hold), logprobs);
        _pending.Remove(0, _pending.Length - hold);

        if (Matcher is { IsTerminated: true })
        {
            // The constraint is matched and nothing may follow: the end-of-generation token is the only choice left.
            Flush();
            return FinishReason.EndOfSequence;
        }
        if (GeneratedCount >= Sampling.MaxTokens || Scheduled.PromptTokenCount + GeneratedCount >= MaxTotalTokens)
        {
            Flush();
            return FinishReason.Length;
        }
        return null;
    }

    private void Flush()
    {
        _pending.Append(_decoder.Flush());
        if (_pending.Length > 0) Emit(-1, _pending.ToString());
        _pending.Clear();
    }

    private void Emit(int token, string text, TokenLogprobs? logprobs = null)
    {
        _text.Append(text);
        if (token < 0 && text.Length == 0) return;
        // NOTE: the engine never schedules a request whose consumer is behind, so this cannot fail for want of room;
        // it fails only after the consumer went away, which is fine to ignore.
        Output.Writer.TryWrite(new GeneratedToken(token < 0 ? _lastToken : token, text, logprobs));
    }

    private bool FindStop(out int at)
    {
        at = -1;
        if (Sampling.StopStrings.Count == 0) return false;
        var s = _pending.ToString();
        foreach (var stop in Sampling.StopStrings)
        {
            int i = s.IndexOf(stop, StringComparison.Ordinal);
            if (i >= 0 && (at < 0 || i < at)) at = i;
        }
        return at >= 0;
    }

    private int HeldBack()
    {
        int hold = 0;
        foreach (var stop in Sampling.StopStrings)
        {
            for (int len = Math.Min(stop.Length - 1, _pending.Length); len > hold; len--)
            {
                bool match = true;
                for (int i = 0; i < len && match; i++) match = _pending[_pending.Length - len + i] == stop[i];
                if (match)
                {
                    hold = len;
                    break;
                }
            }
        }
        return hold;
    }

    /// <summary>Completes the request: closes the stream and publishes the result.</summary>
    public void Finish(FinishReason reason, Exception? error = null)
    {
        LeaveQueue();
        CancelRegistration.Dispose();
        if (error is not null)
        {
            Output.Writer.TryComplete(error);
            Completion.TrySetException(error);
            return;
        }
        long end = LastToken != 0 ? LastToken : Stopwatch.GetTimestamp();
        var ttft = FirstToken != 0 ? Stopwatch.GetElapsedTime(Submitted, FirstToken) : TimeSpan.Zero;
        var latency = Stopwatch.GetElapsedTime(Submitted, end);
        int n = Math.Max(GeneratedCount, FirstToken != 0 ? 1 : 0);
        var tpot = n > 1 ? (latency - ttft) / (n - 1) : TimeSpan.Zero;
        var queue = FirstScheduled != 0 ? Stopwatch.GetElapsedTime(Submitted, FirstScheduled) : latency;
        var metrics = new GenerationMetrics(Scheduled.PromptTokenCount, GeneratedCount, queue, ttft, tpot, latency, PrefixHitTokens)
        {
            Speculation = SpeculativeSteps > 0 ? new Speculative.SpeculationMetrics(SpeculativeSteps, ProposedTokens, AcceptedTokens) : null,
        };
        var result = new Completion(_text.ToString(), Scheduled.OutputTokenIds[..GeneratedCount].ToArray(), PromptTokens.ToArray(), reason, Sampler.Seed, metrics)
        {
            Logprobs = Logprobs?.ToArray(),
            PromptLogprobs = PromptLogprobs,
        };
        Completion.TrySetResult(result);
        Output.Writer.TryComplete();
    }
}
