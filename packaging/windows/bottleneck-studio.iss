; Inno Setup 6 script: a Windows installer around the one-folder PyInstaller build.
; Build on Windows (see packaging/README.md):
;   .venv\Scripts\python -m PyInstaller --noconfirm packaging\bottleneck_studio.spec
;   "C:\Program Files (x86)\Inno Setup 6\ISCC.exe" /DAppVersion=0.1.0 packaging\windows\bottleneck-studio.iss
; AppVersion defaults to the pyproject.toml version below; build_windows.ps1 passes it for you.
; Output: dist\bottleneck-studio-<version>-setup.exe

#define AppName "Bottleneck Studio"
#define AppExe "bottleneck-studio.exe"
#ifndef AppVersion
  #define AppVersion "0.1.0"
#endif
#define Root "..\.."

[Setup]
AppId={{6C1F2E1A-4B7D-4E53-9A57-0B0F7C5D2A11}
AppName={#AppName}
AppVersion={#AppVersion}
AppPublisher=Bottleneck Studio developers
DefaultDirName={autopf}\Bottleneck Studio
DefaultGroupName={#AppName}
DisableProgramGroupPage=yes
UninstallDisplayIcon={app}\{#AppExe}
SetupIconFile={#Root}\resources\icon.ico
LicenseFile=
OutputDir={#Root}\dist
OutputBaseFilename=bottleneck-studio-{#AppVersion}-setup
Compression=lzma2/max
SolidCompression=yes
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
PrivilegesRequiredOverridesAllowed=dialog
WizardStyle=modern

[Languages]
Name: "english"; MessagesFile: "compiler:Default.isl"

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked
Name: "addtopath"; Description: "Add bottleneck-studio to PATH (command line use)"; Flags: unchecked

[Files]
; The whole one-folder build: bottleneck-studio.exe and _internal\ (with resources\ inside).
Source: "{#Root}\dist\bottleneck-studio\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{group}\{#AppName}"; Filename: "{app}\{#AppExe}"; Parameters: "gui"
Name: "{group}\Uninstall {#AppName}"; Filename: "{uninstallexe}"
Name: "{autodesktop}\{#AppName}"; Filename: "{app}\{#AppExe}"; Parameters: "gui"; Tasks: desktopicon

[Registry]
Root: HKA; Subkey: "Environment"; ValueType: expandsz; ValueName: "Path"; ValueData: "{olddata};{app}"; Tasks: addtopath; Check: NeedsAddPath(ExpandConstant('{app}'))

[Run]
Filename: "{app}\{#AppExe}"; Parameters: "--self-test"; StatusMsg: "Checking the installation..."; Flags: runhidden waituntilterminated; Check: WizardSilent
Filename: "{app}\{#AppExe}"; Parameters: "gui"; Description: "{cm:LaunchProgram,{#AppName}}"; Flags: nowait postinstall skipifsilent

[UninstallDelete]
; Nothing is written into {app} at run time; the user's cache and models stay in their profile.
Type: dirifempty; Name: "{app}"

[Code]
function NeedsAddPath(Dir: string): Boolean;
var
  Path: string;
begin
  if not RegQueryStringValue(HKEY_CURRENT_USER, 'Environment', 'Path', Path) then
    Path := '';
  Result := Pos(';' + Uppercase(Dir) + ';', ';' + Uppercase(Path) + ';') = 0;
end;
