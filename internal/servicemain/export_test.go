package servicemain

// HandleArgs is handleArgs, for the external tests.
var HandleArgs = handleArgs
