package cli

func planCommand() command {
	return command{name: "plan", summary: "(not implemented yet)", run: notImplemented("plan")}
}
