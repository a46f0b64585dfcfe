using Inference.KvCache;

namespace Inference.Tests.KvCache;

public class FreeBlockQueueTests
{
    [Test]
    public void StartsWithAllBlocksInIdOrder()
    {
        var q = new FreeBlockQueue(5);
        Assert.That(Ids(q), Is.EqualTo(new[] { 0, 1, 2, 3, 4 }));
        Assert.That(q.Count, Is.EqualTo(5));
    }

    [Test]
    public void RemoveFromMiddlePushFrontAndBack()
    {
        var q = new FreeBlockQueue(5);
        q.Remove(2);
        Assert.That(q.Contains(2), Is.False);
        Assert.That(Ids(q), Is.EqualTo(new[] { 0, 1, 3, 4 }));
        Assert.That(q.PopFront(), Is.EqualTo(0));
        q.PushBack(2);
        q.PushFront(0);
        Assert.That(Ids(q), Is.EqualTo(new[] { 0, 1, 3, 4, 2 }));
        Assert.Throws<InvalidOperationException>(() => q.PushBack(3));
        Assert.Throws<InvalidOperationException>(() => { q.Remove(1); q.Remove(1); });
    }

    [Test]
    public void PopFromEmptyThrows()
    {
        var q = new FreeBlockQueue(1);
        q.PopFront();
        Assert.That(q.Front, Is.EqualTo(-1));
        Assert.Throws<InvalidOperationException>(() => q.PopFront());
    }

    [Test]
    public void RandomOperationsMatchAListModel()
    {
        var rng = new Random(11);
        var q = new FreeBlockQueue(32);
        var model = new List<int>(Enumerable.Range(0, 32));
        for (int step = 0; step < 20_000; step++)
        {
            int op = rng.Next(4);
            if (op == 0 && model.Count > 0)
            {
                Assert.That(q.PopFront(), Is.EqualTo(model[0]));
                model.RemoveAt(0);
            }
            else if (op == 1 && model.Count > 0)
            {
                int id = model[rng.Next(model.Count)];
                q.Remove(id);
                model.Remove(id);
            }
            else
            {
                var missing = Enumerable.Range(0, 32).Where(i => !model.Contains(i)).ToList();
                if (missing.Count == 0) continue;
                int id = missing[rng.Next(missing.Count)];
                if (op == 2) { q.PushBack(id); model.Add(id); }
                else { q.PushFront(id); model.Insert(0, id); }
            }
            if (step % 97 == 0) Assert.That(Ids(q), Is.EqualTo(model));
        }
        Assert.That(Ids(q), Is.EqualTo(model));
    }

    private static int[] Ids(FreeBlockQueue q)
    {
        var buffer = new int[64];
        return buffer[..q.CopyTo(buffer)];
    }
}
