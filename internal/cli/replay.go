package cli

func replayCommand() command {
	return command{name: "replay", summary: "(not implemented yet)", run: notImplemented("replay")}
}
