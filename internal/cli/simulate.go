package cli

func simulateCommand() command {
	return command{name: "simulate", summary: "(not implemented yet)", run: notImplemented("simulate")}
}
