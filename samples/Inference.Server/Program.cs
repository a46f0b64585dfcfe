using Inference.Server;

// dotnet run --project samples/Inference.Server -- --model PATH --urls http://127.0.0.1:8080 [--chat-template FILE]
try
{
    var app = await ServerApp.BuildAsync(args);
    await app.RunAsync();
    return 0;
}
catch (Exception e) when (e is FileNotFoundException or Inference.Loading.ModelFormatException or Inference.Chat.ChatTemplateException)
{
    Console.Error.WriteLine(e.Message);
    return 1;
}
catch (ArgumentException e)
{
    Console.Error.WriteLine(e.Message);
    Console.Error.WriteLine("usage: Inference.Server --model PATH [--urls http://127.0.0.1:8080] [--chat-template FILE] [--model-id NAME] [--threads N] [--ctx-size N]");
    return 2;
}
