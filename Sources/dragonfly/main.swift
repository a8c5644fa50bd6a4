import DragonflyCLI

await DragonflyMain.main()
