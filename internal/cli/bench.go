package cli

func benchCommand() command {
	return command{name: "bench", summary: "(not implemented yet)", run: notImplemented("bench")}
}
