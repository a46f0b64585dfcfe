using System.Security.Cryptography;
using System.Text;

namespace Inference.Server;

/// <summary>
/// Requires <c>Authorization: Bearer KEY</c> on every <c>/v1</c> request and answers others with OpenAI's 401 error;
/// <c>/health</c> and <c>/metrics</c> stay open.
/// </summary>
internal static class ApiKeyCheck
{
    public static Func<HttpContext, RequestDelegate, Task> Create(string key)
    {
        // NOTE: both sides are hashed to a fixed length first, so the comparison takes the same time whatever the
        // length or content of the key presented.
        byte[] expected = SHA256.HashData(Encoding.UTF8.GetBytes(key));
        return (context, next) =>
        {
            if (!context.Request.Path.StartsWithSegments("/v1", StringComparison.Ordinal)) return next(context);
            string? header = context.Request.Headers.Authorization;
            if (header is null || !header.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase))
                return new OpenAiError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'.", code: "invalid_api_key").WriteAsync(context);
            Span<byte> presented = stackalloc byte[SHA256.HashSizeInBytes];
            SHA256.HashData(Encoding.UTF8.GetBytes(header.AsSpan(7).Trim().ToString()), presented);
            if (!CryptographicOperations.FixedTimeEquals(presented, expected))
                return new OpenAiError(401, "Incorrect API key provided.", code: "invalid_api_key").WriteAsync(context);
            return next(context);
        };
    }
}
