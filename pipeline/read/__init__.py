"""Scene pixels as the model sees them: grids (odc-geo GeoBox), each band's window read at its native
resolution, brought onto the scene's grid with the exact upsampling kernel, harmonised radiometry."""
