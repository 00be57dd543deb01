# Build the Windows installer on Windows (PowerShell, Python 3.11, Inno Setup 6 installed).
#   powershell -ExecutionPolicy Bypass -File packaging\windows\build_windows.ps1 [-BundleWeights C:\path\weights.h5]
param([string]$BundleWeights = "")
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..\..")
if (-not (Test-Path .venv)) { py -3.11 -m venv .venv }
.venv\Scripts\python -m pip install -q -e ".[package]"
# Windows wants an .ico: made from resources\icon.png with Pillow.
.venv\Scripts\python -c "from PIL import Image; Image.open('resources/icon.png').save('resources/icon.ico', sizes=[(16,16),(32,32),(48,48),(64,64),(128,128),(256,256)])"
.venv\Scripts\python -m PyInstaller --noconfirm packaging\bottleneck_studio.spec
if ($BundleWeights) {
    New-Item -ItemType Directory -Force dist\bottleneck-studio\_internal\resources\weights | Out-Null
    Copy-Item $BundleWeights dist\bottleneck-studio\_internal\resources\weights\
}
$env:QT_QPA_PLATFORM = "offscreen"
dist\bottleneck-studio\bottleneck-studio.exe --self-test
if ($LASTEXITCODE -ne 0) { throw "frozen self-test failed" }
Remove-Item Env:QT_QPA_PLATFORM
$version = .venv\Scripts\python packaging\project.py version
$iscc = "${env:ProgramFiles(x86)}\Inno Setup 6\ISCC.exe"
& $iscc "/DAppVersion=$version" packaging\windows\bottleneck-studio.iss
if ($LASTEXITCODE -ne 0) { throw "Inno Setup failed" }
Write-Host "installer: dist\bottleneck-studio-$version-setup.exe"
