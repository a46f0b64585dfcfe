using Inference.Server;

// dotnet run --project samples/Inference.Server -- --model PATH [--host 127.0.0.1 --port 8000 | --urls URL] [--api-key KEY] [--chat-template FILE] [engine options: --help]
// In front of an engine cluster (docs/cluster.md): --cluster 30000,30001 --model-id stories [--routing affinity]
if (ServerOptions.IsHelp(args))
{
    ServerOptions.WriteHelp(Console.Out);
    return 0;
}
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
    // One line: the problem, and where the options are listed.
    Console.Error.WriteLine(e.Message + " (options: --help)");
    return 2;
}
