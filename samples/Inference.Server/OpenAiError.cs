using System.Text.Json;

namespace Inference.Server;

/// <summary>A request the server refuses, answered with OpenAI's error shape: <c>{"error":{"message","type","param","code"}}</c>.</summary>
public sealed class OpenAiError : Exception
{
    /// <summary>Creates the error.</summary>
    public OpenAiError(int status, string message, string? param = null, string? code = null, string type = "invalid_request_error") : base(message)
    {
        Status = status;
        Param = param;
        Code = code;
        Type = type;
    }

    /// <summary>The HTTP status.</summary>
    public int Status { get; }

    /// <summary>The offending request field, if any.</summary>
    public string? Param { get; }

    /// <summary>A machine-readable code, if any.</summary>
    public string? Code { get; }

    /// <summary>The error type (<c>invalid_request_error</c>, <c>server_error</c>, …).</summary>
    public string Type { get; }

    /// <summary>Seconds after which the client may retry (sent as <c>Retry-After</c>); null sends none.</summary>
    public int? RetryAfterSeconds { get; init; }

    /// <summary>A 400 for <paramref name="param"/>.</summary>
    public static OpenAiError BadRequest(string message, string? param = null, string? code = null) => new(400, message, param, code);

    /// <summary>The JSON body.</summary>
    public object ToBody() => new { error = new { message = Message, type = Type, param = Param, code = Code } };

    /// <summary>Writes the error as the whole response.</summary>
    public Task WriteAsync(HttpContext context)
    {
        context.Response.StatusCode = Status;
        if (RetryAfterSeconds is int seconds) context.Response.Headers.RetryAfter = seconds.ToString(System.Globalization.CultureInfo.InvariantCulture);
        if (Status == 401) context.Response.Headers.WWWAuthenticate = "Bearer";
        return context.Response.WriteAsJsonAsync(ToBody(), JsonOptions.Default, context.RequestAborted);
    }
}

/// <summary>The JSON settings of all responses: property names are written as declared (snake_case in the anonymous types).</summary>
internal static class JsonOptions
{
    public static JsonSerializerOptions Default { get; } = new(JsonSerializerDefaults.General);
}
