package cli

func sendCommand() command {
	return command{name: "send", summary: "(not implemented yet)", run: notImplemented("send")}
}
