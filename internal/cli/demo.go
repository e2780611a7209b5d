package cli

func demoCommand() command {
	return command{name: "demo", summary: "(not implemented yet)", run: notImplemented("demo")}
}
