namespace Inference.Cuda.Runner;

/// <summary>
/// Which of several products over the same f32 activations share one conversion of them to the tensor-core input type
/// (<see cref="PtxTensorCoreGemm.Stage"/>): every product of one type reads the conversion of the first product of that
/// type. F16 and bf16 products convert once each (the two conversions differ); a product that stages no activations (the
/// row kernels, or the f16 slab path, which converts on its own) takes no part.
/// </summary>
internal static class SharedConversions
{
    /// <summary>Plans the conversions of one input for products whose input types are <paramref name="inputs"/>.</summary>
    /// <param name="inputs">Each product's tensor-core input type, or null where it runs elsewhere.</param>
    /// <param name="convertedBy">Written, one per product: the index of the product whose conversion it reads (the first
    /// of its type, itself when it is that first one), or −1 for a product with no input type.</param>
    /// <returns>The conversions the products need: one per input type among them.</returns>
    /// <exception cref="ArgumentException"><paramref name="convertedBy"/> is shorter than <paramref name="inputs"/>.</exception>
    public static int Plan(ReadOnlySpan<TensorCoreElement?> inputs, Span<int> convertedBy)
    {
        if (convertedBy.Length < inputs.Length)
            throw new ArgumentException($"{inputs.Length} products but room for {convertedBy.Length} plans", nameof(convertedBy));
        int conversions = 0;
        for (int i = 0; i < inputs.Length; i++)
        {
            convertedBy[i] = -1;
            if (inputs[i] is not { } type) continue;
            int first = 0;
            while (inputs[first] != type) first++;   // stops at i at the latest
            convertedBy[i] = first;
            if (first == i) conversions++;
        }
        return conversions;
    }
}
