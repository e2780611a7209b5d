package cli

func profileCommand() command {
	return command{name: "profile", summary: "(not implemented yet)", run: notImplemented("profile")}
}
