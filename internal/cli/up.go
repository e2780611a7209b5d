package cli

func upCommand() command {
	return command{name: "up", summary: "(not implemented yet)", run: notImplemented("up")}
}
